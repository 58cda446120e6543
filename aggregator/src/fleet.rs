//! What the aggregator knows about its agents: which are connected and when each was last seen.

pub mod presence;
