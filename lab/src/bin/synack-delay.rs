//! The lab's delay line: holds every packet of an NFQUEUE queue for a set
//! time, in arrival order (one FIFO per queue, so packets never reorder), can
//! drop the first N TCP SYNs of a queue, and can drop a share of a queue's
//! packets at random (seeded, so a run can be replayed). The kernel here has
//! no netem; iptables -j NFQUEUE and this program stand in for it.
//!
//!   synack-delay --queue 0=2ms --queue 1=2ms --queue 2=20ms --queue 3=20ms \
//!                --drop-syns 1 --drop-queue 0 --loss 2=12.5 --seed 7 \
//!                --ready-file /tmp/ready

use anyhow::{Context, Result, bail};
use clap::Parser;
use nfq::{Queue, Verdict};
use std::{
    collections::HashSet,
    path::PathBuf,
    sync::{
        Arc, Condvar, Mutex,
        atomic::{AtomicU64, AtomicUsize, Ordering},
        mpsc,
    },
    time::{Duration, Instant},
};
use synack_lab::delay::{DelayLine, RandomDrop, SynDropper};

/// Delays (and optionally drops) the packets of NFQUEUE queues.
#[derive(Parser)]
struct Cli {
    /// QUEUE=DELAY, e.g. 0=20ms or 3=0; repeatable, one thread per queue.
    #[arg(long = "queue", value_parser = parse_queue, required = true)]
    queues: Vec<(u16, Duration)>,
    /// Drop the first SYN of each of the next N connections seen on
    /// --drop-queue (their retransmitted SYNs pass).
    #[arg(long, default_value_t = 0)]
    drop_syns: u32,
    /// The queue whose SYNs are dropped.
    #[arg(long, default_value_t = 0)]
    drop_queue: u16,
    /// QUEUE=PERCENT: drop that share of the queue's packets at random
    /// (before they are delayed); repeatable.
    #[arg(long = "loss", value_parser = parse_loss)]
    loss: Vec<(u16, f64)>,
    /// Seed of the random drops; queue Q draws from seed + Q. Printed on
    /// stderr, so a failing run can be replayed packet for packet.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// File written once every queue is bound.
    #[arg(long)]
    ready_file: Option<PathBuf>,
    /// Let idle CPUs halt between packets. By default one lowest-priority
    /// (SCHED_IDLE) thread per CPU spins while packets flow (until 10 s
    /// after the last): a virtual machine's vCPU woken from a halt by a
    /// packet or a release timer runs up to milliseconds late, which made
    /// a 10 ms lab RTT 13.5 ms (median) instead of 10.7; the spinners give
    /// way to every other thread.
    #[arg(long)]
    let_cpus_sleep: bool,
}

/// When a packet last came, and the spinners parked while none came for
/// [`LINGER`].
struct Awake {
    start: Instant,
    /// When the last packet came (ns since `start`).
    last: AtomicU64,
    /// Spinners waiting on `wake`.
    sleeping: AtomicUsize,
    parked: Mutex<()>,
    wake: Condvar,
}

/// How long the spinners keep the CPUs awake after a packet: a request's
/// next packet (the next stage of the same round trip, the answer after
/// the server's think time, the next request of a batch) must find them
/// awake, so they stop only once the lab has gone quiet.
const LINGER: Duration = Duration::from_secs(10);

impl Awake {
    fn new() -> Self {
        Awake {
            start: Instant::now(),
            last: AtomicU64::new(0),
            sleeping: AtomicUsize::new(0),
            parked: Mutex::new(()),
            wake: Condvar::new(),
        }
    }

    fn now_ns(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }

    fn quiet(&self) -> bool {
        self.now_ns()
            .saturating_sub(self.last.load(Ordering::Acquire))
            > LINGER.as_nanos() as u64
    }

    /// A packet came.
    fn packet(&self) {
        self.last.store(self.now_ns(), Ordering::Release);
        if self.sleeping.load(Ordering::Acquire) > 0 {
            // Under the lock, so a spinner between its check and its wait
            // cannot miss it.
            let _g = self.parked.lock().unwrap_or_else(|e| e.into_inner());
            self.wake.notify_all();
        }
    }

    /// A spinner: lowest priority, busy while packets flow, parked once the
    /// lab is quiet, so the CPU it runs on never halts with a release due.
    fn spin(&self) {
        // SAFETY: plain syscall on the calling thread with a valid parameter.
        let idle = unsafe {
            let p = libc::sched_param { sched_priority: 0 };
            libc::sched_setscheduler(0, libc::SCHED_IDLE, &p) == 0
        };
        if !idle {
            // At the queues' real-time priority it would starve the machine.
            eprintln!("synack-delay: no SCHED_IDLE for the spinner; CPUs may halt between packets");
            return;
        }
        loop {
            if self.quiet() {
                let mut g = self.parked.lock().unwrap_or_else(|e| e.into_inner());
                self.sleeping.fetch_add(1, Ordering::AcqRel);
                while self.quiet() {
                    g = self.wake.wait(g).unwrap_or_else(|e| e.into_inner());
                }
                self.sleeping.fetch_sub(1, Ordering::AcqRel);
            }
            for _ in 0..10_000 {
                std::hint::spin_loop();
            }
        }
    }
}

fn parse_queue(s: &str) -> Result<(u16, Duration), String> {
    let (q, d) = s
        .split_once('=')
        .ok_or("expected QUEUE=DELAY, e.g. 0=20ms")?;
    let q: u16 = q.parse().map_err(|_| format!("bad queue number {q:?}"))?;
    let d = d.trim();
    let us: f64 = if let Some(v) = d.strip_suffix("ms") {
        v.parse::<f64>().map_err(|_| format!("bad delay {d:?}"))? * 1000.0
    } else if let Some(v) = d.strip_suffix("us") {
        v.parse::<f64>().map_err(|_| format!("bad delay {d:?}"))?
    } else {
        d.parse::<f64>().map_err(|_| format!("bad delay {d:?}"))? * 1000.0
    };
    if !(0.0..=60e6).contains(&us) {
        return Err(format!("delay {d:?} out of range"));
    }
    Ok((q, Duration::from_nanos((us * 1000.0) as u64)))
}

fn parse_loss(s: &str) -> Result<(u16, f64), String> {
    let (q, p) = s
        .split_once('=')
        .ok_or("expected QUEUE=PERCENT, e.g. 2=12.5")?;
    let q: u16 = q.parse().map_err(|_| format!("bad queue number {q:?}"))?;
    let p: f64 = p
        .trim()
        .trim_end_matches('%')
        .parse()
        .map_err(|_| format!("bad percentage {p:?}"))?;
    if !(0.0..=100.0).contains(&p) {
        return Err(format!("loss {p} % out of range"));
    }
    Ok((q, p))
}

/// The fd of the netlink socket `Queue::open` just made: nfq does not expose
/// it, and we need it to sleep in ppoll until a packet or a due time.
fn open_queue() -> Result<(Queue, i32)> {
    let before = fds()?;
    let q = Queue::open().context("opening an NFQUEUE netlink socket (needs CAP_NET_ADMIN)")?;
    let new: Vec<i32> = fds()?.difference(&before).copied().collect();
    match new.as_slice() {
        [fd] => Ok((q, *fd)),
        _ => bail!("cannot tell the queue's socket apart: new fds {new:?}"),
    }
}

/// This process's socket fds (the directory listing's own fd is not a socket).
fn fds() -> Result<HashSet<i32>> {
    Ok(std::fs::read_dir("/proc/self/fd")?
        .filter_map(|e| {
            let e = e.ok()?;
            let link = std::fs::read_link(e.path()).ok()?;
            link.to_str()?
                .starts_with("socket:")
                .then(|| e.file_name().to_str()?.parse().ok())?
        })
        .collect())
}

fn wait_readable(fd: i32, timeout: Duration) {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    let ts = libc::timespec {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_nsec: timeout.subsec_nanos() as libc::c_long,
    };
    // SAFETY: one valid pollfd and a valid timespec; no signal mask change.
    unsafe { libc::ppoll(&mut p, 1, &ts, std::ptr::null()) };
}

/// What one queue does to its packets.
#[derive(Clone, Copy)]
struct Plan {
    delay: Duration,
    drop_syns: u32,
    loss: f64,
    seed: u64,
}

fn serve(mut q: Queue, fd: i32, plan: Plan, awake: &Awake) -> Result<()> {
    let mut line = DelayLine::new(plan.delay);
    let mut dropper = SynDropper::new(plan.drop_syns);
    let mut random = RandomDrop::new(plan.loss, plan.seed);
    loop {
        let wait = line
            .next_due()
            .map(|d| d.saturating_duration_since(Instant::now()))
            .unwrap_or(Duration::from_millis(200));
        wait_readable(fd, wait);
        loop {
            match q.recv() {
                Ok(mut msg) => {
                    // Both droppers decide for every packet, so the random
                    // sequence is the same whatever the SYN dropper did.
                    let syn = dropper.should_drop(msg.get_payload());
                    let lost = random.should_drop();
                    if syn || lost {
                        msg.set_verdict(Verdict::Drop);
                        q.verdict(msg)?;
                        continue;
                    }
                    line.push(Instant::now(), msg);
                    awake.packet();
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e).context("receiving from the queue"),
            }
        }
        for mut msg in line.pop_due(Instant::now()) {
            msg.set_verdict(Verdict::Accept);
            q.verdict(msg)?;
        }
    }
}

/// Opening is serialised so the new-fd trick above sees one socket at a time.
static OPEN: Mutex<()> = Mutex::new(());

fn start(num: u16, plan: Plan, awake: &Awake, ready: mpsc::Sender<Result<()>>) -> Result<()> {
    let setup = || -> Result<(Queue, i32)> {
        let _g = OPEN.lock().unwrap_or_else(|e| e.into_inner());
        let (mut q, fd) = open_queue()?;
        q.bind(num)
            .with_context(|| format!("binding queue {num} (is another delay line bound to it?)"))?;
        // Let the kernel keep enough packets while we hold them.
        q.set_queue_max_len(num, 65536)?;
        q.set_nonblocking(true);
        Ok((q, fd))
    };
    match setup() {
        Ok((q, fd)) => {
            let _ = ready.send(Ok(()));
            serve(q, fd, plan, awake)
        }
        Err(e) => {
            let msg = format!("{e:#}");
            let _ = ready.send(Err(e));
            bail!(msg)
        }
    }
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    // Real-time class before the queue threads start (they inherit it): a
    // packet's release must not wait for the CPU. Packets are few; the
    // threads sleep in ppoll between them.
    if !synack_lab::realtime(50) {
        eprintln!(
            "synack-delay: no real-time priority (needs CAP_SYS_NICE); timing may jitter under load"
        );
    }
    let awake = Arc::new(Awake::new());
    if !cli.let_cpus_sleep {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        for _ in 0..cpus {
            let a = Arc::clone(&awake);
            std::thread::spawn(move || a.spin());
        }
    }
    let (tx, rx) = mpsc::channel();
    let mut threads = Vec::new();
    for &(num, delay) in &cli.queues {
        let plan = Plan {
            delay,
            drop_syns: if num == cli.drop_queue {
                cli.drop_syns
            } else {
                0
            },
            loss: cli
                .loss
                .iter()
                .rfind(|(q, _)| *q == num)
                .map_or(0.0, |l| l.1),
            seed: cli.seed.wrapping_add(num as u64),
        };
        if plan.loss > 0.0 {
            eprintln!(
                "synack-delay: queue {num} drops {} % at random, seed {} (--seed {})",
                plan.loss, plan.seed, cli.seed
            );
        }
        let tx = tx.clone();
        let a = Arc::clone(&awake);
        threads.push(std::thread::spawn(move || start(num, plan, &a, tx)));
    }
    for _ in &cli.queues {
        rx.recv().context("a queue thread died while starting")??;
    }
    if let Some(f) = &cli.ready_file {
        std::fs::write(f, b"ready")?;
    }
    for t in threads {
        match t.join() {
            Ok(r) => r?,
            Err(_) => bail!("a queue thread panicked"),
        }
    }
    Ok(())
}
