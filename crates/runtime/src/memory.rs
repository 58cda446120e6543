//! Process memory settings the daemons apply first thing in `main`.
//!
//! **No transparent huge pages.** mimalloc (the daemons' allocator) asks the kernel for transparent huge pages
//! on its arenas (`madvise(MADV_HUGEPAGE)`), which a system in THP `madvise` mode (the common default)
//! honours. Faulting in a 2 MiB page means clearing it, and the kernel compacts memory to find one: at the
//! start of a load, while the heaps grow, that stalled the agent and the aggregator for long enough that an
//! open-loop client at 5,000 decisions/s queued up to 200 ms (p99 180–210 ms; with huge pages off, 4 ms in
//! the same run, docs/benchmarks.md "Decision API: transparent huge pages"). Databases and latency-bound
//! servers commonly turn THP off for the same reason; the memory cost is a few more TLB misses.

/// Turns transparent huge pages off for this process and the processes it starts (`prctl(PR_SET_THP_DISABLE)`,
/// Linux; nothing elsewhere). Best effort: an error (a kernel without the flag) changes nothing else and is
/// returned for the caller to log once logging is up.
pub fn disable_transparent_huge_pages() -> Result<(), String> {
    #[cfg(target_os = "linux")]
    {
        nix::sys::prctl::set_thp_disable(true)
            .map_err(|e| format!("prctl(PR_SET_THP_DISABLE): {e}"))
    }
    #[cfg(not(target_os = "linux"))]
    {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    #[cfg(target_os = "linux")]
    fn the_flag_is_set_for_the_process() {
        super::disable_transparent_huge_pages().expect("prctl");
        assert!(nix::sys::prctl::get_thp_disable().expect("prctl get"));
    }
}
