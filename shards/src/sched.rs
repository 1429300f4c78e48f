//! Asking the kernel's fair scheduler for a short time slice for the calling thread.
//!
//! Since Linux 6.12 the EEVDF scheduler takes a per-thread slice from `sched_setattr`'s
//! `sched_runtime` for ordinary (`SCHED_OTHER`) threads, between 0.1 ms and 100 ms. A thread
//! with a shorter slice gets an earlier virtual deadline when it wakes, so it preempts a
//! thread that is in the middle of a long slice (a compiler, a batch job, a load generator)
//! instead of waiting for that slice to end. Latency-bound threads (the apiserver's
//! acceptors, which wake for every request burst and run for tens of microseconds) use it;
//! their share of the CPU does not change, only when they get it. Measured in BENCHMARKS.md
//! ("api GET: one write per poll, short slices"): paced GETs under competing load, p99
//! 58 ms -> 12 ms.
//!
//! No privilege is needed. Older kernels ignore the field for fair threads or refuse the
//! call; either way nothing changes and the error is returned for the caller to log.
//!
//! This is the crate's second module with `unsafe` (beside [`crate::uring`]): one system
//! call that neither `libc` nor `nix` wraps.

use std::io;
use std::time::Duration;

/// The kernel's bounds for a custom slice.
const MIN_SLICE: Duration = Duration::from_micros(100);
const MAX_SLICE: Duration = Duration::from_millis(100);

/// `struct sched_attr` as of `SCHED_ATTR_SIZE_VER1` (include/uapi/linux/sched/types.h).
#[repr(C)]
#[derive(Default)]
struct SchedAttr {
    size: u32,
    sched_policy: u32,
    sched_flags: u64,
    sched_nice: i32,
    sched_priority: u32,
    sched_runtime: u64,
    sched_deadline: u64,
    sched_period: u64,
    sched_util_min: u32,
    sched_util_max: u32,
}

/// Gives the calling thread a fair-scheduler slice of `slice` (clamped to the kernel's
/// 0.1-100 ms), keeping its policy (`SCHED_OTHER`) and nice value.
pub fn set_current_thread_slice(slice: Duration) -> io::Result<()> {
    let slice = slice.clamp(MIN_SLICE, MAX_SLICE);
    let attr = SchedAttr {
        size: std::mem::size_of::<SchedAttr>() as u32,
        sched_policy: libc::SCHED_OTHER as u32,
        // Keep the thread's nice value: sched_setattr sets every field it is given.
        sched_nice: current_nice()?,
        sched_runtime: u64::try_from(slice.as_nanos()).unwrap_or(u64::MAX),
        ..SchedAttr::default()
    };
    // SAFETY: `attr` is a fully initialised `struct sched_attr` of the size it declares,
    // alive for the whole call; pid 0 is the calling thread; the kernel only reads it.
    #[allow(unsafe_code)]
    let r = unsafe {
        libc::syscall(
            libc::SYS_sched_setattr,
            0 as libc::pid_t,
            &attr as *const SchedAttr,
            0 as libc::c_uint,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The calling thread's slice as the kernel reports it (`None` when it has none to report).
pub fn current_thread_slice() -> io::Result<Option<Duration>> {
    let mut attr = SchedAttr::default();
    // SAFETY: the kernel writes at most `size` bytes (the size of `attr`, passed as the
    // third argument) into `attr`, which is live and writable for the whole call.
    #[allow(unsafe_code)]
    let r = unsafe {
        libc::syscall(
            libc::SYS_sched_getattr,
            0 as libc::pid_t,
            &mut attr as *mut SchedAttr,
            std::mem::size_of::<SchedAttr>() as libc::c_uint,
            0 as libc::c_uint,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((attr.sched_runtime > 0).then(|| Duration::from_nanos(attr.sched_runtime)))
}

/// The calling thread's nice value (field 19 of `/proc/thread-self/stat`).
fn current_nice() -> io::Result<i32> {
    let stat = std::fs::read_to_string("/proc/thread-self/stat")?;
    // The command name (field 2) may hold spaces and parentheses: count after the last ')'.
    stat.rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().nth(16))
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "unreadable nice value"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_thread_gets_the_slice_it_asks_for_clamped_and_keeps_its_nice() {
        std::thread::spawn(|| {
            let nice_before = current_nice().unwrap();
            match set_current_thread_slice(Duration::from_micros(250)) {
                Ok(()) => {}
                // A kernel without sched_setattr (or a seccomp filter): nothing to check.
                Err(e) if e.raw_os_error() == Some(libc::ENOSYS) => return,
                Err(e) => panic!("sched_setattr: {e}"),
            }
            assert_eq!(current_nice().unwrap(), nice_before);
            if let Some(s) = current_thread_slice().unwrap() {
                assert_eq!(s, Duration::from_micros(250));
                set_current_thread_slice(Duration::from_nanos(1)).unwrap();
                assert_eq!(current_thread_slice().unwrap(), Some(MIN_SLICE));
            }
        })
        .join()
        .unwrap();
    }
}
