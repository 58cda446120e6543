//! The systemd units under `deploy/systemd/` are valid (`systemd-analyze verify`, with `ExecStart` pointed at
//! the built binaries) and sandboxed: `systemd-analyze security` rates each at most 2.0 ("OK"). `.ci/run`
//! installs systemd's tools where they are missing.
#![allow(clippy::disallowed_methods)] // tests spawn freely and read the clock

use std::path::Path;
use std::process::Command;

use anyhow::{Context as _, ensure};
use gait_e2e::bin;

const UNITS: [(&str, &str); 2] = [
    ("gait-aggregator.service", "gait-aggregator"),
    ("gait-agent.service", "gait-agent"),
];

fn unit_path(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy/systemd")
        .join(name)
}

#[test]
fn the_systemd_units_verify_and_score_ok_in_systemd_analyze_security() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    for (unit, binary) in UNITS {
        let text = std::fs::read_to_string(unit_path(unit))?;
        let built = bin(binary);
        let local = tmp.path().join(unit);
        std::fs::write(
            &local,
            text.replace(
                &format!("/usr/local/bin/{binary}"),
                &built.display().to_string(),
            ),
        )?;
        let verify = Command::new("systemd-analyze")
            .args(["verify", "--man=no"])
            .arg(&local)
            .output()
            .context(
                "systemd-analyze (Debian package systemd) must be installed; .ci/run installs it",
            )?;
        let said = String::from_utf8_lossy(&verify.stderr);
        ensure!(
            verify.status.success() && said.trim().is_empty(),
            "{unit}: systemd-analyze verify: {}\n{said}",
            verify.status
        );
        // --threshold is on the 0–100 scale: 20 = an exposure of 2.0, the top of "OK".
        let security = Command::new("systemd-analyze")
            .args(["security", "--offline=true", "--threshold=20"])
            .arg(unit_path(unit))
            .output()?;
        let report = String::from_utf8_lossy(&security.stdout);
        ensure!(
            security.status.success(),
            "{unit}: exposure above 2.0:\n{}",
            report.lines().last().unwrap_or_default()
        );
    }
    Ok(())
}
