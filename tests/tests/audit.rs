//! End to end: the tamper-evident audit log on real processes. Publishing and revoking append entries;
//! `audit export` + `audit verify` pass on an untouched log; editing, reordering or deleting an audit row
//! directly in the database is detected and the first bad entry named; a consistency proof between two exports
//! verifies, and fails after history is rewritten consistently in the database (which `verify` alone cannot
//! see). Runs on SQLite and, with `GAIT_TEST_DATABASE_URL` set (as `scripts/test.sh` does), on PostgreSQL.
#![allow(clippy::disallowed_methods)] // tests spawn freely and read the clock

use std::path::{Path, PathBuf};
use std::process::Output;

use anyhow::{Context as _, ensure};
use gait_audit::{Entry, Frontier};
use gait_e2e::{Aggregator, POLICY_V1, POLICY_V2, hermetic};
use gait_store::testing::{TestStore, postgres_fresh};
use serde_json::Value;

/// SQLite (embedded default) and, when configured, a fresh PostgreSQL database.
fn backends() -> Vec<(Option<TestStore>, &'static str)> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let mut out: Vec<(Option<TestStore>, &'static str)> = vec![(None, "sqlite")];
    match rt.block_on(postgres_fresh()) {
        Ok(Some(db)) => out.push((Some(db), "postgres")),
        Ok(None) => {}
        Err(e) => panic!("{e}"),
    }
    out
}

/// Direct access to the aggregator's database, as someone with the database's credentials has it.
enum Db {
    Sqlite(sqlx::SqlitePool),
    Postgres(sqlx::PgPool),
}

macro_rules! on_db {
    ($db:expr, |$pool:ident| $body:expr) => {
        match $db {
            Db::Sqlite($pool) => $body,
            Db::Postgres($pool) => $body,
        }
    };
}

impl Db {
    async fn open(url: &str) -> anyhow::Result<Self> {
        Ok(if url.starts_with("sqlite:") {
            Db::Sqlite(sqlx::SqlitePool::connect(url).await?)
        } else {
            Db::Postgres(sqlx::PgPool::connect(url).await?)
        })
    }

    async fn leaves(&self) -> anyhow::Result<Vec<(i64, Vec<u8>)>> {
        const SQL: &str = "SELECT seq, leaf FROM audit_entries ORDER BY seq";
        Ok(on_db!(self, |p| sqlx::query_as(SQL).fetch_all(p).await?))
    }

    async fn set_leaf(&self, seq: i64, leaf: &[u8]) -> anyhow::Result<()> {
        const SQL: &str = "UPDATE audit_entries SET leaf = $1 WHERE seq = $2";
        on_db!(self, |p| sqlx::query(SQL)
            .bind(leaf)
            .bind(seq)
            .execute(p)
            .await
            .map(drop)?);
        Ok(())
    }

    async fn exec(&self, sql: &'static str) -> anyhow::Result<()> {
        on_db!(self, |p| sqlx::query(sql).execute(p).await.map(drop)?);
        Ok(())
    }

    /// Rewrites history the way an insider who knows the format would: changes entry `seq`'s actor, re-chains
    /// every later entry, recomputes every stored subtree and the head, and drops the signed checkpoints the
    /// aggregator would otherwise refuse to contradict. All in one transaction.
    async fn rewrite_history(&self, seq: usize, actor: &str) -> anyhow::Result<()> {
        let rows = self.leaves().await?;
        let mut lines = Vec::new();
        let mut frontier = Frontier::new();
        let mut nodes = Vec::new();
        let mut prev = None;
        for (i, (_, line)) in rows.iter().enumerate() {
            let mut entry = Entry::parse_line(line)?;
            if i == seq {
                entry.actor = actor.to_owned();
            }
            entry.prev = prev.map(|h: gait_audit::Hash| gait_audit::hash::to_hex(&h));
            let line = entry.to_line();
            let leaf = gait_audit::leaf_hash(&line);
            nodes.extend(frontier.append(leaf));
            prev = Some(leaf);
            lines.push(line);
        }
        let last = prev.context("an empty log has no history to rewrite")?;
        on_db!(self, |p| {
            let mut tx = p.begin().await?;
            for (i, line) in lines.iter().enumerate() {
                sqlx::query("UPDATE audit_entries SET leaf = $1, leaf_hash = $2 WHERE seq = $3")
                    .bind(line.as_slice())
                    .bind(gait_audit::leaf_hash(line).as_slice())
                    .bind(i as i64)
                    .execute(&mut *tx)
                    .await?;
            }
            sqlx::query("DELETE FROM audit_nodes")
                .execute(&mut *tx)
                .await?;
            for (id, hash) in nodes.iter().filter(|(id, _)| id.level > 0) {
                sqlx::query("INSERT INTO audit_nodes (level, idx, hash) VALUES ($1, $2, $3)")
                    .bind(i64::from(id.level))
                    .bind(id.index as i64)
                    .bind(hash.as_slice())
                    .execute(&mut *tx)
                    .await?;
            }
            sqlx::query("UPDATE audit_head SET frontier = $1, last_leaf = $2 WHERE id = 1")
                .bind(frontier.to_bytes())
                .bind(last.as_slice())
                .execute(&mut *tx)
                .await?;
            sqlx::query("DELETE FROM audit_checkpoints")
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
        });
        Ok(())
    }
}

struct Fixture {
    agg: Aggregator,
    db: Db,
    rt: tokio::runtime::Runtime,
    out: PathBuf,
    name: &'static str,
}

impl Fixture {
    fn data_args(&self) -> Vec<String> {
        let mut args = vec![
            "--data-dir".to_owned(),
            self.agg.data_dir.display().to_string(),
        ];
        if let Some(url) = &self.agg.database_url {
            args.extend(["--database-url".to_owned(), url.clone()]);
        }
        args
    }

    fn vkey(&self) -> PathBuf {
        self.agg.data_dir.join("keys/audit.vkey")
    }

    fn export(&self, dir: &str, since: Option<&str>) -> anyhow::Result<PathBuf> {
        let path = self.out.join(dir);
        let mut cmd = hermetic("gait-aggregator");
        cmd.args(["audit", "export", "--json", "--out"])
            .arg(&path)
            .args(self.data_args());
        if let Some(since) = since {
            cmd.arg("--since")
                .arg(self.out.join(since).join("checkpoint"));
        }
        let out = cmd.output()?;
        ensure!(
            out.status.success(),
            "[{}] export {dir}: {}",
            self.name,
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(path)
    }

    fn verify(&self, dir: &str, since: Option<&str>) -> anyhow::Result<(Output, Value)> {
        let mut cmd = hermetic("gait-aggregator");
        cmd.args(["audit", "verify", "--json"])
            .arg(self.out.join(dir))
            .arg("--public-key")
            .arg(self.vkey());
        if let Some(since) = since {
            cmd.arg("--since")
                .arg(self.out.join(since).join("checkpoint"));
        }
        let out = cmd.output()?;
        let json: Value = serde_json::from_slice(&out.stdout)
            .with_context(|| format!("verify output: {}", String::from_utf8_lossy(&out.stdout)))?;
        Ok((out, json))
    }

    /// Exports to `dir` and expects `audit verify` to fail (exit 65) naming entry `seq` on line `seq + 1`.
    fn expect_first_bad(&self, dir: &str, seq: u64, what: &str) -> anyhow::Result<()> {
        self.export(dir, None)?;
        let (out, json) = self.verify(dir, None)?;
        ensure!(
            out.status.code() == Some(65),
            "[{}] {what}: verify must exit 65, got {:?}: {json}",
            self.name,
            out.status
        );
        let bad = &json["first_bad_entry"];
        ensure!(
            bad["seq"] == seq && bad["line"] == seq + 1,
            "[{}] {what}: expected entry seq {seq} named, got {json}",
            self.name
        );
        Ok(())
    }

    fn publish(&self, policy: &str) -> anyhow::Result<()> {
        let (status, body) = self
            .agg
            .publish("acme", "web", "prod", &[("p.yaml", policy)])?;
        ensure!(status == 201, "[{}] publish: {status} {body}", self.name);
        Ok(())
    }
}

fn entries(dir: &Path) -> anyhow::Result<Vec<Entry>> {
    let text = std::fs::read(dir.join("entries.jsonl"))?;
    text.split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| Ok(Entry::parse_line(l)?))
        .collect()
}

#[test]
fn audit_log_proves_its_history_and_names_every_tampered_entry() -> anyhow::Result<()> {
    for (db, name) in backends() {
        let tmp = tempfile::tempdir()?;
        let url = db.as_ref().map(|d| d.url().to_owned());
        let agg = Aggregator::start(&tmp.path().join("agg"), url.as_deref())?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let db_url = url.clone().unwrap_or_else(|| {
            format!(
                "sqlite://{}",
                tmp.path().join("agg/aggregator.db").display()
            )
        });
        let fx = Fixture {
            db: rt.block_on(Db::open(&db_url))?,
            agg,
            rt,
            out: tmp.path().join("exports"),
            name,
        };
        scenario(&fx).with_context(|| format!("backend {name}\n{}", fx.agg.log()))?;
    }
    Ok(())
}

fn scenario(fx: &Fixture) -> anyhow::Result<()> {
    // Privileged operations: two publishes and a revocation.
    fx.publish(POLICY_V1)?;
    fx.publish(POLICY_V2)?;
    let out = hermetic("gait-aggregator")
        .args([
            "pki",
            "revoke",
            "--serial",
            "0a1b",
            "--org",
            "acme",
            "--project",
            "web",
        ])
        .args([
            "--env",
            "prod",
            "--agent-id",
            "gone",
            "--reason",
            "key compromise",
        ])
        .args(fx.data_args())
        .output()?;
    ensure!(
        out.status.success(),
        "revoke: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let first = fx.export("first", None)?;
    let logged = entries(&first)?;
    let actions: Vec<&str> = logged.iter().map(|e| e.action.as_str()).collect();
    ensure!(
        actions == ["bundle.publish", "bundle.publish", "pki.revoke"],
        "{actions:?}"
    );
    ensure!(logged[0].actor == "admin-token" && logged[2].actor.starts_with("local:"));
    ensure!(logged[1].before == logged[0].after && logged[1].after.is_some());
    ensure!(logged[2].target.id == "0a1b" && logged[2].target.env.as_deref() == Some("prod"));
    let (out, json) = fx.verify("first", None)?;
    ensure!(
        out.status.success() && json["size"] == 3,
        "verify first: {json}"
    );

    // The same log over HTTP: the checkpoint verifies under the key file, the entries page by seq.
    let (status, cp) = fx.agg.get("/v1/audit/checkpoint")?;
    ensure!(
        status == 200 && cp["size"] == 3,
        "checkpoint: {status} {cp}"
    );
    let vkey = gait_audit::NoteVerifier::parse(&std::fs::read_to_string(fx.vkey())?)?;
    let note = cp["note"].as_str().context("note")?;
    ensure!(gait_audit::Checkpoint::open(&vkey, note)?.size == 3);
    let (status, page) = fx.agg.get("/v1/audit/entries?limit=2")?;
    ensure!(
        status == 200 && page["next_after"] == 1,
        "entries: {status} {page}"
    );
    ensure!(page["entries"][1]["action"] == "bundle.publish");
    let (_, page) = fx.agg.get("/v1/audit/entries?after=1&limit=2")?;
    ensure!(
        page["entries"][0]["action"] == "pki.revoke" && page["next_after"].is_null(),
        "{page}"
    );

    // The log grows; the second export carries the proof that it extends the first checkpoint.
    fx.publish(POLICY_V1)?;
    let second = fx.export("second", Some("first"))?;
    ensure!(second.join("consistency-from-3").exists());
    let (out, json) = fx.verify("second", Some("first"))?;
    ensure!(
        out.status.success() && json["extends"]["proof_checked"] == true,
        "verify second --since first: {json}"
    );
    let out = hermetic("gait-aggregator")
        .args(["audit", "prove", "--json", "--public-key"])
        .arg(fx.vkey())
        .arg("--from-checkpoint")
        .arg(first.join("checkpoint"))
        .arg("--to-checkpoint")
        .arg(second.join("checkpoint"))
        .output()?;
    ensure!(
        out.status.success(),
        "prove: {}",
        String::from_utf8_lossy(&out.stdout)
    );

    // Editing a row: named by its seq.
    let rows = fx.rt.block_on(fx.db.leaves())?;
    ensure!(rows.len() == 4);
    let edited = String::from_utf8(rows[1].1.clone())?.replace("admin-token", "someone-else");
    fx.rt.block_on(fx.db.set_leaf(1, edited.as_bytes()))?;
    fx.expect_first_bad("edited", 1, "edited row")?;
    fx.rt.block_on(fx.db.set_leaf(1, &rows[1].1))?;
    // Editing the last row (no entry after it records its hash): the signed root names it.
    let edited = String::from_utf8(rows[3].1.clone())?.replace("bundle.publish", "bundle.publisi");
    fx.rt.block_on(fx.db.set_leaf(3, edited.as_bytes()))?;
    fx.expect_first_bad("edited-last", 3, "edited last row")?;
    fx.rt.block_on(fx.db.set_leaf(3, &rows[3].1))?;
    // Reordering two rows.
    fx.rt.block_on(fx.db.set_leaf(1, &rows[2].1))?;
    fx.rt.block_on(fx.db.set_leaf(2, &rows[1].1))?;
    fx.expect_first_bad("reordered", 1, "reordered rows")?;
    fx.rt.block_on(fx.db.set_leaf(1, &rows[1].1))?;
    fx.rt.block_on(fx.db.set_leaf(2, &rows[2].1))?;
    let (out, json) = {
        fx.export("restored", None)?;
        fx.verify("restored", None)?
    };
    ensure!(
        out.status.success(),
        "the restored log verifies again: {json}"
    );

    // A consistent rewrite of history: the export verifies on its own, but not as an extension of the
    // checkpoint the auditor kept.
    fx.rt.block_on(fx.db.rewrite_history(1, "someone-else"))?;
    fx.publish(POLICY_V2)?;
    fx.export("rewritten", Some("second"))?;
    let (out, json) = fx.verify("rewritten", None)?;
    ensure!(
        out.status.success(),
        "a consistent rewrite verifies alone: {json}"
    );
    let (out, json) = fx.verify("rewritten", Some("second"))?;
    ensure!(
        out.status.code() == Some(65)
            && json["error"]
                .as_str()
                .is_some_and(|e| e.contains("does not extend")),
        "the rewrite must fail the consistency check: {json}"
    );
    let out = hermetic("gait-aggregator")
        .args(["audit", "prove", "--public-key"])
        .arg(fx.vkey())
        .arg("--from-checkpoint")
        .arg(second.join("checkpoint"))
        .arg("--to-checkpoint")
        .arg(fx.out.join("rewritten/checkpoint"))
        .output()?;
    ensure!(
        out.status.code() == Some(65),
        "prove after a rewrite: {:?}",
        out.status
    );

    // Deleting a row.
    fx.rt
        .block_on(fx.db.exec("DELETE FROM audit_entries WHERE seq = 2"))?;
    fx.expect_first_bad("deleted", 2, "deleted row")?;
    Ok(())
}

#[test]
fn verify_explains_its_usage_and_names_a_missing_export() -> anyhow::Result<()> {
    let help = hermetic("gait-aggregator")
        .args(["audit", "verify", "--help"])
        .output()?;
    let text = String::from_utf8(help.stdout)?;
    ensure!(
        text.contains("--public-key") && text.contains("first bad entry"),
        "{text}"
    );
    let tmp = tempfile::tempdir()?;
    let key = tmp.path().join("audit.vkey");
    let signer = gait_audit::NoteSigner::new("gait-aggregator/example.org", &[1u8; 32])?;
    std::fs::write(&key, format!("{}\n", signer.verifier()))?;
    let out = hermetic("gait-aggregator")
        .args(["audit", "verify"])
        .arg(tmp.path().join("nowhere"))
        .arg("--public-key")
        .arg(&key)
        .output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(
        out.status.code() == Some(66) && stderr.contains("nowhere/checkpoint"),
        "{:?} {stderr}",
        out.status
    );
    Ok(())
}
