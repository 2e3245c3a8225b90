//! Process-level helpers: clocks, /proc readers, the open-files limit and Ctrl-C handling.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Microseconds since the Unix epoch: the clock both the publisher's stamp and the
/// subscribers' receive time are read from (same machine, same clock).
#[inline]
pub fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// Sleeps until the given `now_us()` time (returns at once if it has passed).
pub fn sleep_until_us(t: u64) {
    let now = now_us();
    if t > now {
        std::thread::sleep(Duration::from_micros(t - now));
    }
}

static ABORT: AtomicBool = AtomicBool::new(false);

/// True once the user pressed Ctrl-C (or [`request_abort`] was called): phases end early and
/// the run reports what it has.
pub fn abort_requested() -> bool {
    ABORT.load(Ordering::Relaxed)
}

/// Polls `done` every `every` until it holds, `timeout` passes or an abort is requested,
/// calling `tick` about every 100 ms meanwhile (for progress). True when it gave up.
pub fn poll_until(
    timeout: Duration,
    every: Duration,
    mut done: impl FnMut() -> bool,
    mut tick: impl FnMut(),
) -> bool {
    let started = Instant::now();
    let mut last_tick = started;
    while !done() {
        if started.elapsed() >= timeout || abort_requested() {
            return true;
        }
        if last_tick.elapsed() >= Duration::from_millis(100) {
            tick();
            last_tick = Instant::now();
        }
        std::thread::sleep(every);
    }
    false
}

pub fn request_abort() {
    ABORT.store(true, Ordering::Relaxed);
}

extern "C" fn on_sigint(_: libc::c_int) {
    // Only async-signal-safe operations here: an atomic swap and _exit.
    if ABORT.swap(true, Ordering::Relaxed) {
        unsafe { libc::_exit(130) };
    }
}

/// First Ctrl-C: stop the run early and print what was measured. Second: exit at once.
pub fn install_ctrl_c() {
    // SAFETY: installs a handler that only touches an atomic and calls _exit.
    unsafe {
        libc::signal(libc::SIGINT, on_sigint as *const () as libc::sighandler_t);
    }
}

/// Raises the soft open-files limit to the hard limit; returns the new soft limit.
pub fn raise_nofile() -> std::io::Result<u64> {
    rlimit::increase_nofile_limit(u64::MAX)
}

/// utime + stime of a process in seconds (`pid` "self" for this one).
pub fn cpu_seconds(pid: &str) -> Option<f64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    Some(ticks as f64 / clk_tck())
}

fn clk_tck() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// Resident set size of this process, bytes.
pub fn self_rss_bytes() -> Option<u64> {
    rss_bytes("self")
}

/// Resident set size of process `pid` ("self" for this one), bytes.
pub fn rss_bytes(pid: &str) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = s.lines().find(|l| l.starts_with("VmRSS:"))?;
    Some(line.split_whitespace().nth(1)?.parse::<u64>().ok()? * 1024)
}

/// The kernel's `TcpExt` counters `ListenOverflows` (a full accept queue) and `ListenDrops`
/// (SYNs dropped at a listener, overflows included), for this network namespace: every
/// listener of the machine, not only the server's.
pub fn listen_drops() -> Option<(u64, u64)> {
    listen_drops_in(&std::fs::read_to_string("/proc/net/netstat").ok()?)
}

fn listen_drops_in(text: &str) -> Option<(u64, u64)> {
    let mut lines = text.lines().filter(|l| l.starts_with("TcpExt:"));
    let (names, values) = (lines.next()?, lines.next()?);
    let pairs: Vec<(&str, &str)> = names.split_whitespace().zip(values.split_whitespace()).collect();
    let get = |k: &str| pairs.iter().find(|(n, _)| *n == k)?.1.parse::<u64>().ok();
    Some((get("ListenOverflows")?, get("ListenDrops")?))
}

/// (busy, total) jiffies over all CPUs, from /proc/stat.
pub fn machine_ticks() -> (u64, u64) {
    let s = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(line) = s.lines().next() else {
        return (0, 0);
    };
    let v: Vec<u64> = (line.split_whitespace().skip(1))
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal
    let total: u64 = v.iter().take(8).sum();
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    (total - idle, total)
}

pub fn ncpu() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// CPU counters at one instant, to compute usage over an interval.
#[derive(Debug, Clone, Copy)]
pub struct CpuSnap {
    pub client_s: f64,
    pub machine: (u64, u64),
    pub at: std::time::Instant,
}

impl CpuSnap {
    pub fn now() -> CpuSnap {
        CpuSnap {
            client_s: cpu_seconds("self").unwrap_or(0.0),
            machine: machine_ticks(),
            at: std::time::Instant::now(),
        }
    }

    /// (client % of one core, machine busy % of all cores) from `self` to `later`.
    pub fn usage(&self, later: &CpuSnap) -> (f64, f64) {
        let secs = later.at.duration_since(self.at).as_secs_f64().max(1e-9);
        let client = (later.client_s - self.client_s) / secs * 100.0;
        let busy = later.machine.0.saturating_sub(self.machine.0);
        let total = later.machine.1.saturating_sub(self.machine.1);
        let machine = if total > 0 {
            100.0 * busy as f64 / total as f64
        } else {
            0.0
        };
        (client, machine)
    }
}

/// The process listening on `addr` (TCP), found through /proc/net/tcp{,6} and the processes'
/// descriptors. `None` when it cannot be found (e.g. another user's process).
pub fn listener_pid(addr: std::net::SocketAddr) -> Option<u32> {
    let inode = listener_inode(addr)?;
    let want = format!("socket:[{inode}]");
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            if std::fs::read_link(fd.path()).is_ok_and(|l| l.as_os_str() == want.as_str()) {
                return Some(pid);
            }
        }
    }
    None
}

fn listener_inode(addr: std::net::SocketAddr) -> Option<u64> {
    let table = if addr.is_ipv4() {
        "/proc/net/tcp"
    } else {
        "/proc/net/tcp6"
    };
    let text = std::fs::read_to_string(table).ok()?;
    listener_inode_in(&text, addr)
}

/// Finds the inode of the socket listening on `addr` (or on the wildcard address with the same
/// port) in the text of /proc/net/tcp or /proc/net/tcp6.
fn listener_inode_in(text: &str, addr: std::net::SocketAddr) -> Option<u64> {
    let port = format!("{:04X}", addr.port());
    let exact = match addr.ip() {
        std::net::IpAddr::V4(ip) => format!("{:08X}", u32::from_ne_bytes(ip.octets())),
        std::net::IpAddr::V6(ip) => ip
            .octets()
            .chunks(4)
            .map(|c| format!("{:08X}", u32::from_ne_bytes([c[0], c[1], c[2], c[3]])))
            .collect(),
    };
    let mut wildcard = None;
    for line in text.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 10 || f[3] != "0A" {
            continue; // not LISTEN
        }
        let Some((ip, p)) = f[1].split_once(':') else {
            continue;
        };
        if p != port {
            continue;
        }
        let inode = f[9].parse().ok()?;
        if ip == exact {
            return Some(inode);
        }
        if ip.bytes().all(|b| b == b'0') {
            wildcard = Some(inode);
        }
    }
    wildcard
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_listen_drops() {
        let text = "TcpExt: SyncookiesSent ListenOverflows ListenDrops\nTcpExt: 0 3 5\n\
            IpExt: InNoRoutes\nIpExt: 0\n";
        assert_eq!(listen_drops_in(text), Some((3, 5)));
        assert_eq!(listen_drops_in("IpExt: a\nIpExt: 1\n"), None);
        assert!(listen_drops().is_some(), "this machine has /proc/net/netstat");
    }

    #[test]
    fn finds_listeners_in_proc_net_tcp() {
        let text = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
            0: 0100007F:4880 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 111 1 0 100 0 0 10 0\n\
            1: 00000000:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 222 1 0 100 0 0 10 0\n\
            2: 0100007F:1F90 0100007F:C000 01 00000000:00000000 00:00000000 00000000     0        0 333 1 0 100 0 0 10 0\n";
        let on = |s: &str| listener_inode_in(text, s.parse().unwrap());
        assert_eq!(on("127.0.0.1:18560"), Some(111));
        assert_eq!(on("127.0.0.1:8080"), Some(222)); // the wildcard listener, not the connection
        assert_eq!(on("127.0.0.1:9"), None);
    }

    #[test]
    fn finds_our_own_listener() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        assert_eq!(listener_pid(l.local_addr().unwrap()), Some(std::process::id()));
    }
}
