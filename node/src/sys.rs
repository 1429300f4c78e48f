//! Thin wrappers over the kernel interfaces the runtime needs and `nix` does not cover:
//! pidfds, capability sets, extended attributes, the loopback interface flags, terminal
//! ioctls (controlling tty, window size), `fork` in the single-threaded shim and its zygote,
//! and descriptor passing to the zygote.
//!
//! # Unsafe
//!
//! This is the runtime's one module with `#[allow(unsafe_code)]` outside the io_uring ring
//! (which lives in `shards`). Every block is a single system call on arguments that this
//! module builds and owns for the duration of the call; each carries a `// SAFETY:` comment.
#![allow(unsafe_code)]

use std::ffi::CString;
use std::io;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};

use nix::unistd::{ForkResult, Pid};

/// Opens a pidfd for `pid` (`pidfd_open(2)`): a handle that stays bound to this process even
/// if its pid is reused, becomes readable when the process exits, and signals it race-free.
pub(crate) fn pidfd_open(pid: i32) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes two integers and returns a new fd or -1; no memory is passed.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    let fd = i32::try_from(fd).map_err(|_| io::Error::other("pidfd out of range"))?;
    // SAFETY: the kernel just returned this fd to us and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Sends `signal` to the process behind `pidfd` (`pidfd_send_signal(2)`). `ESRCH` means it
/// has already exited.
pub(crate) fn pidfd_send_signal(pidfd: &impl AsFd, signal: i32) -> io::Result<()> {
    // SAFETY: the fd is borrowed for the call; a null siginfo is allowed (the kernel fills one
    // in as kill(2) would); flags must be 0.
    let r = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_fd().as_raw_fd(),
            signal,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Forks the calling process, which must be single-threaded (checked: the shim calls it
/// before it starts any runtime or thread), so the child may allocate and take locks freely.
pub(crate) fn fork_single_threaded() -> io::Result<ForkResult> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let threads = status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|v| v.trim().parse::<u32>().ok());
    if threads != Some(1) {
        return Err(io::Error::other(
            "fork from a multi-threaded process refused",
        ));
    }
    // SAFETY: the process has exactly one thread (checked above), so no lock can be held by
    // another thread in the child.
    unsafe { nix::unistd::fork() }.map_err(io::Error::from)
}

/// Waits until the process behind the pidfd exits (the fd becomes readable).
pub(crate) async fn pidfd_readable(fd: OwnedFd) -> io::Result<()> {
    // SAFETY: the OwnedFd is a valid open fd owned by the AsyncFd until it is dropped at the
    // end of this function, and as_raw_fd always returns that same fd.
    let afd = unsafe {
        tokio::io::unix::AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE)
    }?;
    let _guard = afd.readable().await?;
    Ok(())
}

/// Registers an owned descriptor (a pty master) with the Tokio reactor for reads and writes.
pub(crate) fn async_fd(fd: OwnedFd) -> io::Result<tokio::io::unix::AsyncFd<OwnedFd>> {
    // SAFETY: the OwnedFd is a valid open fd owned by the AsyncFd until it is dropped, and
    // as_raw_fd always returns that same fd.
    let afd = unsafe {
        tokio::io::unix::AsyncFd::register_with_interest(
            fd,
            tokio::io::Interest::READABLE | tokio::io::Interest::WRITABLE,
        )
    }?;
    Ok(afd)
}

/// Drops `cap` from the calling thread's bounding set (`PR_CAPBSET_DROP`).
pub(crate) fn capbset_drop(cap: u32) -> io::Result<()> {
    // SAFETY: prctl with integer arguments only.
    let r = unsafe { libc::prctl(libc::PR_CAPBSET_DROP, libc::c_ulong::from(cap), 0, 0, 0) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Clears the ambient capability set (`PR_CAP_AMBIENT_CLEAR_ALL`).
pub(crate) fn clear_ambient_caps() -> io::Result<()> {
    // SAFETY: prctl with integer arguments only.
    let r = unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
            0,
            0,
            0,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

/// Sets the calling thread's effective, permitted and inheritable capability sets to `mask`
/// (bit `n` = capability `n`), via `capset(2)`.
pub(crate) fn capset_all(mask: u64) -> io::Result<()> {
    let mut header = CapHeader {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    // The mask is split into two 32-bit words, low first, as the v3 ABI wants.
    let low = (mask & 0xffff_ffff) as u32;
    let high = (mask >> 32) as u32;
    let data = [
        CapData {
            effective: low,
            permitted: low,
            inheritable: low,
        },
        CapData {
            effective: high,
            permitted: high,
            inheritable: high,
        },
    ];
    // SAFETY: header and data are live, correctly laid out (#[repr(C)]) v3 structures of the
    // sizes the kernel reads (one header, two data words) for the whole call.
    let r = unsafe {
        libc::syscall(
            libc::SYS_capset,
            &mut header as *mut CapHeader,
            data.as_ptr(),
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Sets an extended attribute on an open file (`fsetxattr(2)`), e.g. overlayfs'
/// `trusted.overlay.opaque` on an unpacked directory.
pub(crate) fn fsetxattr(fd: &impl AsFd, name: &str, value: &[u8]) -> io::Result<()> {
    let name = CString::new(name).map_err(|_| io::Error::other("xattr name with NUL"))?;
    // SAFETY: name is a NUL-terminated string and value a live slice of the given length,
    // both borrowed for the call; the fd is borrowed.
    let r = unsafe {
        libc::fsetxattr(
            fd.as_fd().as_raw_fd(),
            name.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Brings the loopback interface of the current network namespace up (`SIOCSIFFLAGS`).
pub(crate) fn loopback_up() -> io::Result<()> {
    let sock = nix::sys::socket::socket(
        nix::sys::socket::AddressFamily::Inet,
        nix::sys::socket::SockType::Datagram,
        nix::sys::socket::SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    // SAFETY: ifreq is plain old data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(b"lo\0") {
        *dst = *src as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS reads the name and writes the flags inside the ifreq we own.
    let r = unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel filled the flags member of the union on success just above.
    unsafe {
        req.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
    }
    // SAFETY: as above; SIOCSIFFLAGS reads the ifreq we own.
    let r = unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The pid of a process as nix wants it.
pub(crate) fn pid(raw: i32) -> Pid {
    Pid::from_raw(raw)
}

/// Restores the default disposition of every catchable signal and unblocks all signals (the
/// Rust runtime ignores SIGPIPE, and ignored signals would survive `execve` into the
/// container).
pub(crate) fn reset_signals() {
    use nix::sys::signal::{SigHandler, SigSet, SigmaskHow, Signal, sigprocmask};
    for sig in Signal::iterator() {
        if matches!(sig, Signal::SIGKILL | Signal::SIGSTOP) {
            continue;
        }
        // SAFETY: installing SIG_DFL runs no code of ours in signal context.
        let _ = unsafe { nix::sys::signal::signal(sig, SigHandler::SigDfl) };
    }
    let _ = sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None);
}

/// Makes the terminal on `fd` the controlling terminal of the calling session leader
/// (`TIOCSCTTY`).
pub(crate) fn set_controlling_tty(fd: i32) -> io::Result<()> {
    // SAFETY: an ioctl with an integer argument on a descriptor the caller owns.
    let r = unsafe { libc::ioctl(fd, libc::TIOCSCTTY, 0) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Sets the window size of the terminal behind `fd` (`TIOCSWINSZ`; the foreground process
/// group gets SIGWINCH).
pub(crate) fn set_winsize(fd: &impl AsFd, cols: u16, rows: u16) -> io::Result<()> {
    let ws = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads a winsize we own for the duration of the call; the fd is
    // borrowed.
    let r = unsafe { libc::ioctl(fd.as_fd().as_raw_fd(), libc::TIOCSWINSZ, &ws) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Sends `data` with `fds` attached (`SCM_RIGHTS`) on a unix socket.
pub(crate) fn send_with_fds(sock: &impl AsFd, data: &[u8], fds: &[RawFd]) -> io::Result<()> {
    use nix::sys::socket::{ControlMessage, MsgFlags, sendmsg};
    let iov = [std::io::IoSlice::new(data)];
    let cmsgs: &[ControlMessage<'_>] = if fds.is_empty() {
        &[]
    } else {
        &[ControlMessage::ScmRights(fds)]
    };
    sendmsg::<()>(
        sock.as_fd().as_raw_fd(),
        &iov,
        cmsgs,
        MsgFlags::MSG_NOSIGNAL,
        None,
    )?;
    Ok(())
}

/// Receives one message of at most `buf.len()` bytes and the descriptors attached to it (at
/// most 4, close-on-exec) from a unix socket. `Ok((0, []))` is the peer's end.
pub(crate) fn recv_with_fds(sock: &impl AsFd, buf: &mut [u8]) -> io::Result<(usize, Vec<OwnedFd>)> {
    use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg};
    let mut cmsg = nix::cmsg_space!([RawFd; 4]);
    let mut iov = [std::io::IoSliceMut::new(buf)];
    let msg = recvmsg::<()>(
        sock.as_fd().as_raw_fd(),
        &mut iov,
        Some(&mut cmsg),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )?;
    let mut fds = Vec::new();
    for c in msg.cmsgs()? {
        if let ControlMessageOwned::ScmRights(raw) = c {
            for fd in raw {
                // SAFETY: the kernel just installed these descriptors in this process for
                // this message (SCM_RIGHTS); nothing else owns them.
                fds.push(unsafe { OwnedFd::from_raw_fd(fd) });
            }
        }
    }
    if msg.flags.contains(MsgFlags::MSG_CTRUNC) {
        return Err(io::Error::other("descriptors truncated"));
    }
    Ok((msg.bytes, fds))
}

/// Closes every descriptor from `first` up (`close_range(2)`): a forked shim keeps only its
/// stdio.
pub(crate) fn close_fds_from(first: u32) -> io::Result<()> {
    // SAFETY: close_range takes plain integers; the caller (a freshly forked child about to
    // run the shim) owns every descriptor it closes and uses none of them afterwards.
    let r = unsafe { libc::syscall(libc::SYS_close_range, first, u32::MAX, 0u32) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
