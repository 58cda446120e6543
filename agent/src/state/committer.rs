//! Group commit for producer appends: concurrent producers share one durable outbox commit.
//!
//! Every append must be durable (fsync) before its producer is answered, and one fsync costs milliseconds, so
//! committing each record alone caps a busy sidecar at a few hundred records per second. A dedicated thread
//! takes whatever appends are waiting (up to [`MAX_GROUP`]), commits them with one `append_many`, and answers
//! each producer. A lone producer pays one commit, as before; many concurrent producers share commits. When a
//! group cannot be committed as a whole (quota reached, one record invalid) each record of it is appended on
//! its own, so every producer gets exactly the answer a single append would have given.

use std::sync::mpsc;

use tokio::sync::oneshot;

use crate::outbox::{AppendOutcome, NewRecord, Outbox, OutboxError};

/// Most records committed together.
pub(crate) const MAX_GROUP: usize = 512;

type Reply = oneshot::Sender<Result<AppendOutcome, OutboxError>>;

/// Handle to the committer thread. Dropping it closes the queue and joins the thread, so the outbox (and the
/// database file lock it holds) is released by the time the drop returns.
pub(crate) struct Committer {
    tx: Option<mpsc::Sender<(NewRecord, Reply)>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Committer {
    fn drop(&mut self) {
        drop(self.tx.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Committer {
    pub(crate) fn spawn(outbox: Outbox) -> std::io::Result<Self> {
        let (tx, rx) = mpsc::channel::<(NewRecord, Reply)>();
        let thread = std::thread::Builder::new()
            .name("gait-outbox-commit".into())
            .spawn(move || run(outbox, rx))?;
        Ok(Self {
            tx: Some(tx),
            thread: Some(thread),
        })
    }

    /// Queue `record`; the answer arrives once it is durable (or refused).
    pub(crate) async fn append(&self, record: NewRecord) -> Result<AppendOutcome, OutboxError> {
        let (reply, answer) = oneshot::channel();
        let gone = || OutboxError::Corrupt {
            path: String::new(),
            seq: 0,
            detail: "the outbox commit thread stopped".into(),
        };
        let tx = self.tx.as_ref().ok_or_else(gone)?;
        tx.send((record, reply)).map_err(|_| gone())?;
        answer.await.map_err(|_| gone())?
    }
}

fn run(outbox: Outbox, rx: mpsc::Receiver<(NewRecord, Reply)>) {
    while let Ok(first) = rx.recv() {
        let mut group = vec![first];
        while group.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(next) => group.push(next),
                Err(_) => break,
            }
        }
        commit(&outbox, group);
    }
}

fn commit(outbox: &Outbox, group: Vec<(NewRecord, Reply)>) {
    if group.len() == 1 {
        for (record, reply) in group {
            let _ = reply.send(outbox.append(record));
        }
        return;
    }
    let records: Vec<NewRecord> = group.iter().map(|(r, _)| r.clone()).collect();
    match outbox.append_many(records) {
        Ok(outcomes) if outcomes.len() == group.len() => {
            for ((_, reply), outcome) in group.into_iter().zip(outcomes) {
                let _ = reply.send(Ok(outcome));
            }
        }
        // All-or-nothing failed (or an unexpected answer): give every record its own verdict.
        _ => {
            for (record, reply) in group {
                let _ = reply.send(outbox.append(record));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::disallowed_methods)] // tests spawn freely and read the clock
    use super::*;
    use crate::db::AgentDb;
    use crate::outbox::OutboxLimits;
    use gait_wire::RecordClass;

    fn record(i: u32) -> NewRecord {
        NewRecord {
            class: RecordClass::Block,
            kind: "gate.decision".into(),
            created_unix_ms: 1,
            bundle: None,
            payload: format!("{{\"i\":{i}}}").into_bytes(),
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_producers_each_get_their_own_durable_seq() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = AgentDb::open(dir.path().join("agent.redb")).expect("db");
        let outbox = Outbox::open(
            &db,
            OutboxLimits {
                max_records: 100_000,
                max_bytes: 1 << 30,
            },
        )
        .expect("outbox");
        let committer = std::sync::Arc::new(Committer::spawn(outbox.clone()).expect("spawn"));
        let mut tasks = Vec::new();
        for i in 0..400 {
            let c = committer.clone();
            tasks.push(tokio::spawn(async move { c.append(record(i)).await }));
        }
        let mut seqs = Vec::new();
        for t in tasks {
            match t.await.expect("join").expect("append") {
                AppendOutcome::Appended { seq } => seqs.push(seq),
                AppendOutcome::Shed => panic!("block records are never shed"),
            }
        }
        seqs.sort_unstable();
        assert_eq!(
            seqs,
            (1..=400).collect::<Vec<u64>>(),
            "every producer got a distinct seq, none lost"
        );
        assert_eq!(outbox.stats().depth, 400);
    }
}
