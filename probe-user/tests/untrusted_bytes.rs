//! Every parser of untrusted bytes against random and mutated input: it may
//! refuse, it must never panic (a panic in `synack watch` would end it) and
//! what it keeps stays bounded. Seeded, so a failure reproduces; bounded in
//! count, so it runs in the ordinary test suite. The coverage-guided search
//! over the same parsers and invariants is in fuzz/fuzz_targets/ (`cargo
//! xtask fuzz`, docs/fuzzing.md).

use synack::{model::events, model::sniff, model::targets, model::tcp};

/// xorshift64*: small, seedable, good enough to shake parsers.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
    fn bytes(&mut self, max: usize) -> Vec<u8> {
        let n = self.below(max + 1);
        (0..n).map(|_| self.next() as u8).collect()
    }
    /// A copy of `seed` with a few bytes changed, cut, or grown.
    fn mutate(&mut self, seed: &[u8]) -> Vec<u8> {
        let mut v = seed.to_vec();
        for _ in 0..1 + self.below(4) {
            match self.below(4) {
                0 if !v.is_empty() => {
                    let i = self.below(v.len());
                    v[i] = self.next() as u8;
                }
                1 => v.truncate(self.below(v.len() + 1)),
                2 => {
                    let i = self.below(v.len() + 1);
                    let b = self.bytes(16);
                    v.splice(i..i, b);
                }
                _ if v.len() > 4 => {
                    // Length fields are where parsers go wrong: set one high.
                    let i = self.below(v.len() - 1);
                    v[i] = 0xff;
                    v[i + 1] = self.next() as u8;
                }
                _ => {}
            }
        }
        v
    }
}

fn client_hello() -> Vec<u8> {
    let name = b"media.example.com";
    let mut sni = vec![0u8];
    sni.extend_from_slice(&(name.len() as u16).to_be_bytes());
    sni.extend_from_slice(name);
    let mut sni_ext = (sni.len() as u16).to_be_bytes().to_vec();
    sni_ext.extend_from_slice(&sni);
    let mut ext = vec![0, 0];
    ext.extend_from_slice(&(sni_ext.len() as u16).to_be_bytes());
    ext.extend_from_slice(&sni_ext);
    ext.extend_from_slice(&[0, 43, 0, 3, 2, 3, 4]);
    let mut body = vec![3, 3];
    body.extend_from_slice(&[7; 32]);
    body.push(0);
    body.extend_from_slice(&[0, 2, 0x13, 0x01, 1, 0]);
    body.extend_from_slice(&(ext.len() as u16).to_be_bytes());
    body.extend_from_slice(&ext);
    let mut hs = vec![1];
    hs.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
    hs.extend_from_slice(&body);
    let mut rec = vec![0x16, 3, 1];
    rec.extend_from_slice(&(hs.len() as u16).to_be_bytes());
    rec.extend_from_slice(&hs);
    rec
}

const ROUNDS: usize = 60_000;

#[test]
fn payload_parsers_never_panic() {
    let seeds: Vec<Vec<u8>> = vec![
        client_hello(),
        b"GET /a/b?token=x HTTP/1.1\r\nHost: h\r\nX: y\r\n\r\n".to_vec(),
        b"POST http://proxy:8080/x HTTP/1.1\r\n\r\n".to_vec(),
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello".to_vec(),
        vec![0x17, 3, 3, 0, 5, 1, 2, 3, 4, 5, 0x15, 3, 3, 0, 2, 1, 0],
    ];
    let mut rng = Rng(0x5eed_5a1c);
    for i in 0..ROUNDS {
        let b = if i % 3 == 0 {
            rng.bytes(1100)
        } else {
            let s = &seeds[rng.below(seeds.len())];
            rng.mutate(s)
        };
        let _ = sniff::classify(&b);
        if let Some(r) = sniff::http_request(&b, i % 2 == 0) {
            assert!(r.method.len() <= 27 && r.path.len() <= 4 * 512 + 3, "{r:?}");
            assert!(r.host.as_ref().is_none_or(|h| h.len() <= 4 * 255 + 3));
        }
        if let Some(s) = sniff::http_status(&b) {
            assert!((100..=999).contains(&s));
        }
        if let Some(n) = sniff::client_hello_sni(&b) {
            assert!(n.len() <= 4 * 255 + 3);
        }
        let _ = sniff::server_hello_version(&b);
        let r = sniff::records(&b, b.len() as u32);
        assert!(r.types.len() <= b.len() / 5 + 1);
        let _ = tcp::parse_options(&b[..b.len().min(40)]);
    }
    // The seeds themselves still parse.
    assert_eq!(
        sniff::client_hello_sni(&seeds[0]).as_deref(),
        Some("media.example.com")
    );
}

#[test]
fn ring_buffer_records_and_targets_files_never_panic() {
    let mut rng = Rng(0xfeed_beef);
    for _ in 0..ROUNDS / 4 {
        let n = [0usize, 1, 151, 152, 153, 152 + 1024, 152 + 1025][rng.below(7)];
        let mut b: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
        // Event.kind is byte 74: a valid kind reaches the snapshot length.
        if b.len() > 74 && rng.below(2) == 0 {
            b[74] = 1 + rng.below(6) as u8;
        }
        if let Ok((_, snap)) = events::decode(&b) {
            assert!(snap.len() <= probe_common::SNAP_BYTES);
        }
    }
    let seed = "https://a.example/x name=api tag=env:prod expect=2xx reuse=2 timeout=3s\n\
                http://b/ method=POST header=\"A: b\" data='{}' # c\n";
    for _ in 0..ROUNDS / 4 {
        let m = rng.mutate(seed.as_bytes());
        let text = String::from_utf8_lossy(&m);
        let (t, e) = targets::parse(&text);
        assert!(t.len() + e.len() <= text.lines().count());
    }
}
