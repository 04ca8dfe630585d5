//! Direct paths that do not look like the textbook's, built on top of a
//! running [`Lab`]: a router that keeps the TTL, a point-to-point tunnel (as
//! VPNs use), a slow first neighbour resolution on the far link, and a
//! thread-per-connection origin that no one here wrote (Python's
//! `http.server`). Each is a value that undoes itself on drop, or a change
//! to the lab's namespaces that goes with them.
//!
//! ```text
//!  client                         mid                       server
//!  tunnel 10.30.0.1/32 fd00:30::1/128                       tunnel 10.40.0.1/32 fd00:40::1/128
//!    route 10.40.0.1 dev tun  (no gateway)                    route 10.30.0.1 dev tun
//!    outer packets: UDP 10.10.1.1:51820 <-- delay line --> 10.10.2.1:51820
//! ```

use crate::{
    Netns, Proc, sh,
    topo::{Lab, SERVER_V4, SERVER_V6},
    unique, wait_for,
};
use anyhow::{Context, Result, bail};
use std::{process::Stdio, time::Duration};

/// The client's and the origin's addresses inside the tunnel. Neither is on a
/// subnet of the other side: each side has a /32 (/128) and a route to the
/// other's address over the tunnel device, as WireGuard or OpenVPN set up.
pub const TUN_CLIENT_V4: &str = "10.30.0.1";
pub const TUN_ORIGIN_V4: &str = "10.40.0.1";
pub const TUN_CLIENT_V6: &str = "fd00:30::1";
pub const TUN_ORIGIN_V6: &str = "fd00:40::1";
/// The outer UDP port of the tunnel (WireGuard's).
pub const TUN_PORT: u16 = 51820;
/// Inner MTU: 1500 less the outer IPv4 and UDP headers and some margin, so
/// outer packets are never fragmented.
pub const TUN_MTU: u32 = 1400;

/// Makes mid a router that does not decrement TTL / hop limit, as cloud VPC
/// routers and overlay datapaths do: every packet that comes in gets one
/// more (mangle/PREROUTING, before the forwarding path takes one off), so it
/// leaves with the TTL it came with. The targets clamp at 255, so neighbour
/// discovery (hop limit 255) is untouched.
pub fn keep_ttl(lab: &Lab) -> Result<()> {
    for (ipt, target, arg) in [
        ("iptables", "TTL", "--ttl-inc"),
        ("ip6tables", "HL", "--hl-inc"),
    ] {
        lab.mid
            .exec(&[
                ipt,
                "-t",
                "mangle",
                "-A",
                "PREROUTING",
                "-j",
                target,
                arg,
                "1",
            ])
            .with_context(|| format!("{ipt} -j {target}: does the kernel have the target?"))?;
    }
    Ok(())
}

/// The tunnel's user-space packet pump: one per side, a tun device (no
/// packet-info header) and a connected UDP socket, each packet read from
/// one written to the other. The kernel here has no ipip, gre, sit or
/// ip6tnl, but it has tun. The socket is bound before the device is made,
/// so the device's existence means the pump is ready.
const PUMP: &str = r#"
import fcntl, os, select, socket, struct, sys
name, local, peer, port = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((local, port))
s.connect((peer, port))
fd = os.open("/dev/net/tun", os.O_RDWR)
TUNSETIFF, IFF_TUN, IFF_NO_PI = 0x400454CA, 0x0001, 0x1000
fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TUN | IFF_NO_PI))
while True:
    r, _, _ = select.select([fd, s], [], [])
    try:
        if fd in r:
            s.send(os.read(fd, 65535))
        if s in r:
            os.write(fd, s.recv(65535))
    except OSError:
        # The peer's pump not up yet (ICMP port unreachable), or the device
        # going down: the packet is lost, as on a real link.
        pass
"#;

/// A point-to-point tunnel between the client and the server namespaces
/// whose outer UDP packets cross mid (so the delay line applies to them).
/// The origin's tunnel addresses are on the server's tun device, where the
/// lab's origin (listening on every address) answers.
pub struct Tunnel {
    // The pumps hold the devices: stopping them removes the devices.
    _pumps: Vec<Proc>,
    pub client_if: String,
    pub server_if: String,
}

impl Tunnel {
    pub fn up(lab: &Lab) -> Result<Tunnel> {
        let (ci, si) = (unique("tn"), unique("tn"));
        let mut pumps = Vec::new();
        for (ns, ifn, local, peer, addr4, addr6, other4, other6) in [
            (
                &lab.client,
                &ci,
                crate::topo::CLIENT_V4,
                SERVER_V4,
                TUN_CLIENT_V4,
                TUN_CLIENT_V6,
                TUN_ORIGIN_V4,
                TUN_ORIGIN_V6,
            ),
            (
                &lab.server,
                &si,
                SERVER_V4,
                crate::topo::CLIENT_V4,
                TUN_ORIGIN_V4,
                TUN_ORIGIN_V6,
                TUN_CLIENT_V4,
                TUN_CLIENT_V6,
            ),
        ] {
            // Real-time class like the delay line: a pump late by a
            // scheduling slice would add to every packet's delay.
            let mut c = ns.command("chrt");
            c.args(["-f", "30", "python3", "-c", PUMP, ifn, local, peer])
                .arg(TUN_PORT.to_string())
                .stdout(Stdio::null())
                .stderr(lab_log(lab, &format!("tunnel-{ifn}"))?);
            let mut p = Proc::spawn(c, "tunnel pump")?;
            wait_for(Duration::from_secs(10), "the tunnel device", || {
                if let Ok(Some(st)) = p.child.try_wait() {
                    return Some(Err(anyhow::anyhow!("the tunnel pump exited: {st}")));
                }
                ns.exec(&["ip", "link", "show", "dev", ifn])
                    .is_ok()
                    .then_some(Ok(()))
            })??;
            pumps.push(p);
            let mtu = TUN_MTU.to_string();
            ns.exec(&["ip", "link", "set", "dev", ifn, "mtu", &mtu, "up"])?;
            ns.exec(&["ip", "addr", "add", &format!("{addr4}/32"), "dev", ifn])?;
            ns.exec(&[
                "ip",
                "-6",
                "addr",
                "add",
                &format!("{addr6}/128"),
                "dev",
                ifn,
                "nodad",
            ])?;
            // The far side's address over the device, no gateway: the
            // route is `scope link`, as a VPN's AllowedIPs routes are.
            ns.exec(&["ip", "route", "add", &format!("{other4}/32"), "dev", ifn])?;
            ns.exec(&[
                "ip",
                "-6",
                "route",
                "add",
                &format!("{other6}/128"),
                "dev",
                ifn,
            ])?;
        }
        Ok(Tunnel {
            _pumps: pumps,
            client_if: ci,
            server_if: si,
        })
    }
}

/// The server's ARP replies, made in user space after a set delay instead of
/// by the kernel (which is told to answer none: arp_ignore 8): the first
/// contact's neighbour resolution on the far link then takes that long. IPv6
/// needs none of this: NS and NA are IP packets and the delay line holds
/// them like any other, so an IPv6 resolution costs one far-link RTT.
const SLOW_ARP: &str = r#"
import socket, struct, sys, time
ifname, ip, delay, ready = sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4]
mac = bytes.fromhex(open("/sys/class/net/%s/address" % ifname).read().strip().replace(":", ""))
tip = socket.inet_aton(ip)
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0806))
s.bind((ifname, 0x0806))
open(ready, "w").write("ready")
while True:
    f = s.recv(2048)
    arp = f[14:42]
    # Requests for our address only (not our own requests, nor replies).
    if len(arp) < 28 or arp[6:8] != b"\x00\x01" or arp[24:28] != tip:
        continue
    sha, spa = arp[8:14], arp[14:18]
    time.sleep(delay)
    s.send(sha + mac + b"\x08\x06" + struct.pack("!HHBBH", 1, 0x0800, 6, 4, 2) + mac + tip + sha + spa)
    print("answered %s after %.1f ms" % (socket.inet_ntoa(spa), delay * 1000), flush=True)
"#;

/// The server answers ARP only after `delay` (see `SLOW_ARP`). Dropping it
/// gives ARP back to the kernel.
pub struct SlowArp {
    proc: Option<Proc>,
    server: String,
    ifn: String,
}

impl SlowArp {
    pub fn start(lab: &Lab, delay: Duration) -> Result<SlowArp> {
        let ifn = lab.server_if.clone();
        let ready = lab.dir.join(&unique("arp-ready"));
        let mut c = lab.server.command("chrt");
        c.args(["-f", "30", "python3", "-c", SLOW_ARP, &ifn, SERVER_V4])
            .arg(format!("{}", delay.as_secs_f64()))
            .arg(&ready)
            .stdout(lab_log(lab, "slow-arp")?)
            .stderr(lab_log(lab, "slow-arp")?);
        let mut p = Proc::spawn(c, "slow arp")?;
        wait_for(Duration::from_secs(10), "the ARP responder", || {
            if let Ok(Some(st)) = p.child.try_wait() {
                return Some(Err(anyhow::anyhow!("the ARP responder exited: {st}")));
            }
            ready.exists().then_some(Ok(()))
        })??;
        let s = SlowArp {
            proc: Some(p),
            server: lab.server.name.clone(),
            ifn,
        };
        s.arp_ignore(8)?;
        Ok(s)
    }

    fn arp_ignore(&self, v: u8) -> Result<()> {
        sh(&[
            "ip",
            "netns",
            "exec",
            &self.server,
            "sysctl",
            "-qw",
            &format!("net.ipv4.conf.{}.arp_ignore={v}", self.ifn),
        ])
        .map(|_| ())
    }
}

impl Drop for SlowArp {
    fn drop(&mut self) {
        let _ = self.arp_ignore(0);
        self.proc = None;
    }
}

/// Makes mid forget the server's link-layer address (IPv4 and IPv6), so the
/// next packet toward the server waits for a fresh resolution, as on a first
/// contact. First waits until no TCP connection between client and server
/// is still closing (a FIN crossing mid after the flush would resolve the
/// server again), then flushes until the entries stay gone.
pub fn forget_server(lab: &Lab) -> Result<()> {
    // Every state in which a segment may still cross mid (TIME-WAIT sends
    // nothing unless something arrives).
    let busy = [
        "state",
        "established",
        "state",
        "syn-sent",
        "state",
        "syn-recv",
        "state",
        "fin-wait-1",
        "state",
        "fin-wait-2",
        "state",
        "close-wait",
        "state",
        "last-ack",
        "state",
        "closing",
    ];
    wait_for(
        Duration::from_secs(10),
        "the lab's connections to close",
        || {
            [&lab.client, &lab.server]
                .iter()
                .all(|ns| {
                    let mut a = vec!["ss", "-Htn"];
                    a.extend_from_slice(&busy);
                    ns.exec(&a).is_ok_and(|s| s.trim().is_empty())
                })
                .then_some(())
        },
    )?;
    let gone = || -> Result<(bool, String)> {
        for (fam, addr) in [("-4", SERVER_V4), ("-6", SERVER_V6)] {
            lab.mid.exec(&[
                "ip",
                fam,
                "neigh",
                "flush",
                "to",
                addr,
                "dev",
                &lab.mid_s_if,
            ])?;
        }
        let v4 = neigh(&lab.mid, "-4", SERVER_V4, &lab.mid_s_if)?;
        let v6 = neigh(&lab.mid, "-6", SERVER_V6, &lab.mid_s_if)?;
        Ok((v4.is_empty() && v6.is_empty(), format!("{v4} {v6}")))
    };
    wait_for(Duration::from_secs(5), "mid to forget the server", || {
        gone().ok().filter(|g| g.0).map(|_| ())
    })
    .with_context(|| format!("mid's entries: {:?}", gone().map(|g| g.1)))
}

/// mid's neighbour entry for an address, "" when there is none.
fn neigh(ns: &Netns, fam: &str, addr: &str, ifn: &str) -> Result<String> {
    Ok(ns
        .exec(&["ip", fam, "neigh", "show", "to", addr, "dev", ifn])?
        .trim()
        .to_string())
}

/// Python's own `http.server` in the server namespace (`ThreadingHTTPServer`
/// behind `python3 -m http.server`: a new thread for every connection),
/// HTTP/1.1 so connections are kept alive, dual-stack on `port`, serving a
/// directory with one small file, `small.txt`. Not written here: its
/// per-connection cost and its way of writing (headers and body in two
/// writes) are its own.
pub fn threading_origin(lab: &Lab, port: u16) -> Result<Proc> {
    let root = lab.dir.join(&unique("www"));
    std::fs::create_dir_all(&root)?;
    std::fs::write(root.join("small.txt"), "synack lab\n".repeat(40))?;
    let mut c = lab.server.command("python3");
    c.args([
        "-m",
        "http.server",
        "--bind",
        "::",
        "--protocol",
        "HTTP/1.1",
    ])
    .arg("--directory")
    .arg(&root)
    .arg(port.to_string())
    .stdout(Stdio::null())
    // One log line per request; a file takes them without blocking.
    .stderr(lab_log(lab, "python-http-server")?);
    let mut p = Proc::spawn(c, "python http.server")?;
    wait_for(Duration::from_secs(15), "http.server to listen", || {
        if let Ok(Some(st)) = p.child.try_wait() {
            return Some(Err(anyhow::anyhow!("http.server exited: {st}")));
        }
        lab.server
            .exec(&["ss", "-Hltn", &format!("sport = :{port}")])
            .ok()
            .filter(|s| !s.trim().is_empty())
            .map(|_| Ok(()))
    })??;
    Ok(p)
}

/// An append-only log file in the lab's directory.
fn lab_log(lab: &Lab, name: &str) -> Result<std::fs::File> {
    let p = lab.dir.join(&format!("{name}.log"));
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&p)
        .with_context(|| format!("creating {}", p.display()))
}

/// The TTL (IPv4) or hop limit (IPv6) the kernel's own SYN-ACKs start with
/// in a namespace, so a test can say what "untouched" is.
pub fn default_ttl(ns: &Netns, v6: bool) -> Result<u8> {
    let key = if v6 {
        "net.ipv6.conf.all.hop_limit"
    } else {
        "net.ipv4.ip_default_ttl"
    };
    let v = ns.exec(&["sysctl", "-n", key])?;
    match v.trim().parse() {
        Ok(t) => Ok(t),
        Err(_) => bail!("{key} = {v:?}"),
    }
}
