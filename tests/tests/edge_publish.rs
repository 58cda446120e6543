//! End to end: `gait-aggregator publish --candidate [POLICY=]FILE --stage observe|dry_run --delegation-key FILE`
//! against a real `gait-aggregator` process: the stage, the candidate (bound by digest) and the delegation key
//! are signed into the bundle; misuse is refused with a message naming the flag and what to do.

use std::path::Path;
use std::process::Output;

use anyhow::{Context as _, ensure};
use gait_e2e::{Aggregator, POLICY_V1, POLICY_V2, hermetic};

fn publish(agg: &Aggregator, args: &[&str]) -> anyhow::Result<Output> {
    Ok(hermetic("gait-aggregator")
        .env("GAIT_DATA_DIR", &agg.data_dir)
        .args(["publish", "--server", &agg.url("")])
        .args(["--org", "acme", "--project", "web", "--env", "prod"])
        .args(args)
        .output()?)
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn write(dir: &Path, name: &str, text: &str) -> anyhow::Result<String> {
    let path = dir.join(name);
    std::fs::write(&path, text)?;
    Ok(path.to_string_lossy().into_owned())
}

#[test]
fn publish_signs_a_staged_candidate_and_the_delegation_key_into_the_bundle() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let agg = Aggregator::start(&tmp.path().join("agg"), None)?;
    let files = tmp.path();
    let policy = write(files, "base.yaml", POLICY_V1)?;
    let candidate = write(files, "base.next.yaml", POLICY_V2)?;
    let key = gait_canon::sign::SigningKey::from_seed(&[9; 32]).public_key();
    let key_file = write(
        files,
        "delegation.pub",
        &format!("{}\n", key.to_gait_public_key()),
    )?;

    let out = publish(
        &agg,
        &[
            "--policy",
            &policy,
            "--candidate",
            &candidate,
            "--stage",
            "dry_run",
            "--delegation-key",
            &key_file,
        ],
    )?;
    ensure!(out.status.success(), "publish: {}", stderr(&out));
    let (status, latest) = agg.get("/v1/orgs/acme/projects/web/envs/prod/bundles/latest")?;
    ensure!(status == 200, "latest: {status} {latest}");
    let entry = &latest["manifest"]["policies"][0];
    assert_eq!(entry["name"], "base.yaml", "{latest}");
    assert_eq!(entry["stage"], "dry_run", "{latest}");
    assert_eq!(entry["candidate"]["name"], "base.next.yaml", "{latest}");
    assert_eq!(
        entry["candidate"]["sha256"],
        gait_canon::sha256_hex(POLICY_V2.as_bytes()),
        "{latest}"
    );
    assert_eq!(
        latest["manifest"]["delegation_key"],
        key.to_gait_public_key(),
        "{latest}"
    );
    let stages = agg
        .audit_actions()?
        .into_iter()
        .filter(|(action, _)| action == "bundle.publish")
        .map(|(_, e)| e["details"]["stages"].clone())
        .next_back()
        .context("bundle.publish entry")?;
    assert_eq!(stages["base.yaml"]["stage"], "dry_run", "{stages}");

    // Refused, each naming what to fix, and nothing published.
    let other = write(files, "other.yaml", POLICY_V2)?;
    let cases: [(&[&str], &str); 4] = [
        (&["--policy", &policy, "--candidate", &candidate], "--stage"),
        (
            &[
                "--policy",
                &policy,
                "--candidate",
                &candidate,
                "--stage",
                "enforce",
            ],
            "enforce",
        ),
        (
            &[
                "--policy",
                &policy,
                "--policy",
                &other,
                "--candidate",
                &candidate,
                "--stage",
                "observe",
            ],
            "POLICY=FILE",
        ),
        (
            &[
                "--policy",
                &policy,
                "--candidate",
                &format!("base.yaml={policy}"),
                "--stage",
                "observe",
            ],
            "already a policy or candidate name",
        ),
    ];
    for (args, says) in cases {
        let out = publish(&agg, args)?;
        ensure!(!out.status.success(), "{args:?} was accepted");
        ensure!(stderr(&out).contains(says), "{args:?}: {}", stderr(&out));
    }
    let (_, latest) = agg.get("/v1/orgs/acme/projects/web/envs/prod/bundles/latest")?;
    assert_eq!(latest["epoch"], 1, "no refused publish made a bundle");
    Ok(())
}
