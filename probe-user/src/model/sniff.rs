//! Where a turn's first bytes become request facts: the HTTP/1.x request
//! line, Host and status, and the TLS ClientHello's server name, from the
//! bounded payload snapshots the kernel copies in `synack watch`.
//!
//! Privacy by construction: only the method, the path (its query string
//! dropped unless asked for), the Host header and the status line are ever
//! taken from plain HTTP; nothing else of the snapshot outlives the parse.

/// What a connection speaks, judged from its first payload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proto {
    Http,
    Tls,
    /// Neither: the connection is not reported.
    Other,
}

/// Judges a connection by the first bytes its opener sent.
pub fn classify(b: &[u8]) -> Proto {
    if b.len() >= 3 && b[0] == 0x16 && b[1] == 0x03 {
        return Proto::Tls;
    }
    if request_line(b).is_some() {
        return Proto::Http;
    }
    Proto::Other
}

/// An HTTP/1.x request, as far as synack keeps it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpRequest {
    pub method: String,
    /// The path, without its query string unless kept; "*" for OPTIONS *.
    pub path: String,
    /// The Host header, or the authority of an absolute-form target.
    pub host: Option<String>,
}

/// Longest method, path and host kept (longer ones are cut, marked with "...").
const MAX_METHOD: usize = 24;
const MAX_PATH: usize = 512;
const MAX_HOST: usize = 255;

/// "METHOD target HTTP/1.x" at the start of `b`: (method, target).
fn request_line(b: &[u8]) -> Option<(&str, &str)> {
    let end = b
        .windows(2)
        .position(|w| w == b"\r\n")
        .unwrap_or(b.len().min(MAX_PATH + 64));
    let line = std::str::from_utf8(&b[..end]).ok()?;
    let mut parts = line.splitn(3, ' ');
    let method = parts.next()?;
    let target = parts.next()?;
    let version = parts.next();
    let token_ok = !method.is_empty()
        && method.len() <= MAX_METHOD
        && method
            .bytes()
            .all(|c| c.is_ascii_uppercase() || c == b'-' || c == b'_');
    let target_ok = target.starts_with('/')
        || target == "*"
        || target.starts_with("http://")
        || target.starts_with("https://")
        || (method == "CONNECT" && !target.is_empty());
    // The version may lie beyond the snapshot for a very long target.
    let version_ok = version.is_none_or(|v| v.starts_with("HTTP/1."));
    (token_ok && target_ok && version_ok).then_some((method, target))
}

fn printable(s: &str, max: usize) -> String {
    let mut out: String = s.chars().filter(|c| !c.is_control()).take(max).collect();
    if s.chars().count() > max {
        out.push_str("...");
    }
    out
}

/// Parses the request line and the Host header of a request's first bytes.
pub fn http_request(b: &[u8], keep_query: bool) -> Option<HttpRequest> {
    let (method, target) = request_line(b)?;
    let (mut host, path, absolute) = match target
        .strip_prefix("http://")
        .or_else(|| target.strip_prefix("https://"))
    {
        Some(rest) => {
            // The authority ends at '/', '?' or '#' (RFC 3986, 3.2): in
            // "http://h?token=x" the query is not part of the host, and is as
            // private as any other (found by fuzzing).
            let (auth, p) = rest.split_at(rest.find(['/', '?', '#']).unwrap_or(rest.len()));
            (Some(auth.to_string()), p, true)
        }
        None => (None, target, false),
    };
    let path = if keep_query {
        path
    } else {
        path.split(['?', '#']).next().unwrap_or(path)
    };
    let path = if absolute && !path.starts_with('/') {
        format!("/{path}")
    } else {
        path.to_string()
    };
    if host.is_none() {
        host = header(b, "host");
    }
    Some(HttpRequest {
        method: printable(method, MAX_METHOD),
        path: printable(&path, MAX_PATH),
        host: host.map(|h| printable(&h, MAX_HOST)),
    })
}

/// The value of the first header with this (lower-case) name, within the
/// snapshot and before the end of the header block.
fn header(b: &[u8], name: &str) -> Option<String> {
    let text = String::from_utf8_lossy(b);
    let head = text.split("\r\n\r\n").next()?;
    head.split("\r\n").skip(1).find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.trim()
            .eq_ignore_ascii_case(name)
            .then(|| v.trim().to_string())
    })
}

/// The status code of an HTTP/1.x response's first bytes.
pub fn http_status(b: &[u8]) -> Option<u16> {
    let rest = b.strip_prefix(b"HTTP/1.")?;
    if rest.len() < 6 || rest[1] != b' ' {
        return None;
    }
    let code = std::str::from_utf8(&rest[2..5]).ok()?.parse().ok()?;
    (100..=999).contains(&code).then_some(code)
}

/// A bounds-checked reader over a byte slice.
struct Rd<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Rd<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let s = self.b.get(self.at..self.at.checked_add(n)?)?;
        self.at += n;
        Some(s)
    }
    fn u8(&mut self) -> Option<usize> {
        Some(self.take(1)?[0] as usize)
    }
    fn u16(&mut self) -> Option<usize> {
        let s = self.take(2)?;
        Some(((s[0] as usize) << 8) | s[1] as usize)
    }
    fn u24(&mut self) -> Option<usize> {
        let s = self.take(3)?;
        Some(((s[0] as usize) << 16) | ((s[1] as usize) << 8) | s[2] as usize)
    }
}

/// The extensions of a ClientHello (`hs_type` 1) or ServerHello (2) that
/// starts the first TLS record in `b`: (type, data) pairs, as far as the
/// snapshot reaches.
fn hello_extensions(b: &[u8], hs_type: usize) -> Option<Vec<(usize, &[u8])>> {
    let mut r = Rd { b, at: 0 };
    if r.u8()? != 0x16 {
        return None;
    }
    r.take(4)?; // record version and length
    if r.u8()? != hs_type {
        return None;
    }
    r.u24()?;
    r.take(2 + 32)?; // legacy version, random
    let sid = r.u8()?;
    r.take(sid)?;
    if hs_type == 1 {
        let cs = r.u16()?;
        r.take(cs)?;
        let comp = r.u8()?;
        r.take(comp)?;
    } else {
        r.take(2 + 1)?; // cipher suite, compression
    }
    let total = r.u16()?;
    let end = r.at + total;
    let mut out = Vec::new();
    while r.at + 4 <= end.min(b.len()) {
        let t = r.u16()?;
        let l = r.u16()?;
        match r.take(l) {
            Some(d) => out.push((t, d)),
            None => break, // cut by the snapshot
        }
    }
    Some(out)
}

/// The server name (SNI) of a ClientHello.
pub fn client_hello_sni(b: &[u8]) -> Option<String> {
    let ext = hello_extensions(b, 1)?;
    let (_, d) = ext.iter().find(|(t, _)| *t == 0)?;
    let mut r = Rd { b: d, at: 0 };
    r.u16()?; // list length
    while let Some(kind) = r.u8() {
        let len = r.u16()?;
        let name = r.take(len)?;
        if kind == 0 {
            let s = std::str::from_utf8(name).ok()?;
            return Some(printable(s, MAX_HOST));
        }
    }
    None
}

/// The TLS version a ServerHello settles on: 0x0304 for TLS 1.3 (from its
/// supported_versions extension), else its legacy version field.
pub fn server_hello_version(b: &[u8]) -> Option<u16> {
    let ext = hello_extensions(b, 2)?;
    if let Some((_, d)) = ext.iter().find(|(t, _)| *t == 43)
        && d.len() == 2
    {
        return Some(u16::from_be_bytes([d[0], d[1]]));
    }
    // Legacy version: bytes 9..11 of the record.
    Some(u16::from_be_bytes([*b.get(9)?, *b.get(10)?]))
}

/// The TLS records that start within a segment's first bytes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Records {
    /// Content types of the records whose header lies in the snapshot.
    pub types: Vec<u8>,
    /// The records seen end exactly at the end of the segment (`seg_len`):
    /// the segment is made of whole records only.
    pub whole: bool,
    /// Length of the longest record seen.
    pub max_len: usize,
}

/// Shortest encrypted record an HTTP request can be: the smallest HTTP/1.x
/// request ("GET / HTTP/1.0" and two CRLFs, 18 bytes) plus the content-type
/// byte and a 16-byte AEAD tag. Shorter ones are alerts (close_notify is 19)
/// or HTTP/2 control frames.
pub(crate) const MIN_REQUEST_RECORD: usize = 35;

/// Walks TLS record headers from the start of a segment's snapshot.
pub fn records(snap: &[u8], seg_len: u32) -> Records {
    let mut out = Records::default();
    let mut at = 0usize;
    while at + 5 <= snap.len() {
        let t = snap[at];
        if !(20..=24).contains(&t) || snap[at + 1] != 3 {
            return out;
        }
        out.types.push(t);
        let len = u16::from_be_bytes([snap[at + 3], snap[at + 4]]) as usize;
        out.max_len = out.max_len.max(len);
        at += 5 + len;
    }
    out.whole = at == seg_len as usize;
    out
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    #[test]
    fn requests_keep_only_what_they_may() {
        let b = b"GET /a/b?token=secret HTTP/1.1\r\nUser-Agent: x\r\nHost: api.example\r\nAuthorization: Bearer s\r\n\r\n";
        assert_eq!(classify(b), Proto::Http);
        let r = http_request(b, false).unwrap();
        assert_eq!(r.method, "GET");
        assert_eq!(r.path, "/a/b");
        assert_eq!(r.host.as_deref(), Some("api.example"));
        assert_eq!(http_request(b, true).unwrap().path, "/a/b?token=secret");
        let r = http_request(b"POST http://proxy.example:8080/x?y HTTP/1.1\r\n", false).unwrap();
        assert_eq!(r.host.as_deref(), Some("proxy.example:8080"));
        assert_eq!(r.path, "/x");
        // The Host header after the end of the header block is body, not a header.
        let b = b"GET / HTTP/1.1\r\nA: b\r\n\r\nHost: no\r\n";
        assert_eq!(http_request(b, false).unwrap().host, None);
    }

    #[test]
    fn absolute_form_without_a_path_keeps_its_query_private() {
        // Regression from fuzzing: the query and fragment ended up in the host.
        let b = b"GET http://proxy.example?token=secret HTTP/1.1\r\nHost: h\r\n\r\n";
        let r = http_request(b, false).unwrap();
        assert_eq!(r.host.as_deref(), Some("proxy.example"));
        assert_eq!(r.path, "/");
        assert_eq!(http_request(b, true).unwrap().path, "/?token=secret");
        let r = http_request(b"GET https://h.example#frag HTTP/1.1\r\n", false).unwrap();
        assert_eq!(
            (r.host.as_deref(), r.path.as_str()),
            (Some("h.example"), "/")
        );
        let r = http_request(b"HEAD http://h.example HTTP/1.0\r\n", true).unwrap();
        assert_eq!(
            (r.host.as_deref(), r.path.as_str()),
            (Some("h.example"), "/")
        );
    }

    #[test]
    fn not_http() {
        assert_eq!(classify(b"SSH-2.0-OpenSSH_9.2\r\n"), Proto::Other);
        assert_eq!(classify(b"get / HTTP/1.1\r\n"), Proto::Other);
        assert_eq!(classify(b"GET / HTTP/2.0\r\n"), Proto::Other);
        assert_eq!(classify(b"PRI * HTTP/2.0\r\n"), Proto::Other);
        assert_eq!(classify(b""), Proto::Other);
        // A request line longer than the snapshot still counts.
        let mut long = b"GET /".to_vec();
        long.extend(std::iter::repeat_n(b'a', 2000));
        assert_eq!(classify(&long[..1024]), Proto::Http);
        assert!(
            http_request(&long[..1024], false)
                .unwrap()
                .path
                .ends_with("...")
        );
    }

    #[test]
    fn statuses() {
        assert_eq!(http_status(b"HTTP/1.1 200 OK\r\n"), Some(200));
        assert_eq!(http_status(b"HTTP/1.0 404 Not Found\r\n"), Some(404));
        assert_eq!(http_status(b"HTTP/1.1 2"), None);
        assert_eq!(http_status(b"\x17\x03\x03\x00\x20"), None);
    }

    /// A ClientHello with SNI `name` after another extension, in one record.
    pub(crate) fn client_hello(name: &str) -> Vec<u8> {
        let mut ext = vec![0x00, 0x0b, 0x00, 0x02, 0x01, 0x00]; // ec_point_formats
        let n = name.as_bytes();
        let sni_list = [&[0u8][..], &(n.len() as u16).to_be_bytes(), n].concat();
        let sni = [&((sni_list.len()) as u16).to_be_bytes()[..], &sni_list].concat();
        ext.extend_from_slice(&[0, 0]);
        ext.extend_from_slice(&(sni.len() as u16).to_be_bytes());
        ext.extend_from_slice(&sni);
        let mut body = vec![3, 3];
        body.extend_from_slice(&[7; 32]);
        body.push(0); // session id
        body.extend_from_slice(&[0, 2, 0x13, 0x01]); // one cipher suite
        body.extend_from_slice(&[1, 0]); // null compression
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

    #[test]
    fn sni_from_a_client_hello() {
        let ch = client_hello("media.example.com");
        assert_eq!(classify(&ch), Proto::Tls);
        assert_eq!(client_hello_sni(&ch).as_deref(), Some("media.example.com"));
        // Cut before the name: no SNI, no panic, at every length.
        for n in 0..ch.len() - 1 {
            assert_eq!(client_hello_sni(&ch[..n]), None, "cut at {n}");
        }
    }

    fn server_hello(ext: &[u8]) -> Vec<u8> {
        let mut body = vec![3, 3];
        body.extend_from_slice(&[9; 32]);
        body.push(0);
        body.extend_from_slice(&[0x13, 0x01, 0]);
        body.extend_from_slice(&(ext.len() as u16).to_be_bytes());
        body.extend_from_slice(ext);
        let mut hs = vec![2];
        hs.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
        hs.extend_from_slice(&body);
        let mut rec = vec![0x16, 3, 3];
        rec.extend_from_slice(&(hs.len() as u16).to_be_bytes());
        rec.extend_from_slice(&hs);
        rec
    }

    /// A TLS 1.3 ServerHello (supported_versions 0x0304).
    pub(crate) fn server_hello_13() -> Vec<u8> {
        server_hello(&[0, 43, 0, 2, 3, 4])
    }

    #[test]
    fn server_hello_versions() {
        assert_eq!(server_hello_version(&server_hello_13()), Some(0x0304));
        assert_eq!(server_hello_version(&server_hello(&[])), Some(0x0303));
        assert_eq!(server_hello_version(b"HTTP/1.1 200"), None);
    }

    #[test]
    fn record_walk() {
        let mut seg = vec![0x17, 3, 3, 0, 3, 1, 2, 3];
        seg.extend_from_slice(&[0x17, 3, 3, 0, 2, 9, 9]);
        let r = records(&seg, seg.len() as u32);
        assert_eq!(r.types, [0x17, 0x17]);
        assert!(r.whole);
        let r = records(&seg, seg.len() as u32 + 100);
        assert!(!r.whole, "more bytes follow in the segment");
        assert_eq!(records(b"HTTP/1.1 200", 12).types, Vec::<u8>::new());
    }
}
