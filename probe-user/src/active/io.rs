//! The instrumented byte streams under and over TLS: where user-space times
//! and stream offsets of one request are taken.
//!
//! `RawStream` sits directly on the TCP socket and counts every byte, so an
//! offset it reports is the same offset the kernel's sequence numbers give
//! (see `flows`). Under TLS it hands rustls at most one TLS record per read,
//! so when the first response byte comes out of TLS we know exactly which
//! record (and so which TCP segment) carried it, even when TLS 1.3 session
//! tickets arrived just before the response.
//!
//! `AppStream` sits where HTTP reads and writes: it records when the request
//! was written and when its first response byte reached user space.

use crate::{
    active::stamps::{self, Stamps},
    host::clock::mono_ns,
    model::h2::{ACK, FrameScanner, HEADERS, PING},
};
use std::{
    io,
    os::fd::AsRawFd,
    pin::Pin,
    sync::{Arc, Mutex, MutexGuard},
    task::{Context, Poll, ready},
};
use tokio::{
    io::{AsyncRead, AsyncWrite, Interest, ReadBuf},
    net::TcpStream,
};

/// Splits a byte stream into TLS records (5-byte header: type, version,
/// 16-bit length; then the body).
#[derive(Clone, Debug, Default)]
pub(crate) struct RecordCursor {
    /// Header bytes of the current record seen so far (0..=5).
    hdr_have: usize,
    hdr: [u8; 5],
    /// Body bytes of the current record not yet consumed.
    body_left: usize,
    /// Stream offset of the first byte of the current (or last) record.
    pub record_start: u64,
    /// Stream offset of the next byte.
    pub offset: u64,
}

impl RecordCursor {
    /// How many of the `avail` bytes (which start at the current offset) can
    /// be delivered without crossing into the next record.
    pub(crate) fn deliverable(&self, avail: &[u8]) -> usize {
        if self.hdr_have == 5 || (self.hdr_have == 0 && self.body_left > 0) {
            return self.body_left.min(avail.len());
        }
        let need = 5 - self.hdr_have;
        if avail.len() < need {
            return avail.len();
        }
        let mut h = self.hdr;
        h[self.hdr_have..].copy_from_slice(&avail[..need]);
        let body = u16::from_be_bytes([h[3], h[4]]) as usize;
        (need + body).min(avail.len())
    }

    /// Consumes bytes that were delivered.
    pub(crate) fn consume(&mut self, mut b: &[u8]) {
        while !b.is_empty() {
            if self.hdr_have < 5 && self.body_left == 0 {
                if self.hdr_have == 0 {
                    self.record_start = self.offset;
                }
                let take = (5 - self.hdr_have).min(b.len());
                self.hdr[self.hdr_have..self.hdr_have + take].copy_from_slice(&b[..take]);
                self.hdr_have += take;
                self.offset += take as u64;
                b = &b[take..];
                if self.hdr_have == 5 {
                    self.body_left = u16::from_be_bytes([self.hdr[3], self.hdr[4]]) as usize;
                    if self.body_left == 0 {
                        self.hdr_have = 0;
                    }
                }
            } else {
                let take = self.body_left.min(b.len());
                self.body_left -= take;
                self.offset += take as u64;
                b = &b[take..];
                if self.body_left == 0 {
                    self.hdr_have = 0;
                }
            }
        }
    }
}

/// What the streams saw of the request currently armed.
#[derive(Clone, Debug, Default)]
pub(crate) struct RequestIo {
    /// Raw outgoing offset of the request's first byte (after TLS: its first record).
    pub out_start: Option<u64>,
    /// Raw outgoing offset one past the request's last byte.
    pub out_end: u64,
    /// Raw incoming offset of the response's first byte (TLS: its first record).
    pub in_start: Option<u64>,
    /// CLOCK_MONOTONIC ns of the first and the last write of the request.
    pub first_write_ns: Option<u64>,
    pub last_write_ns: Option<u64>,
    /// CLOCK_MONOTONIC ns when the first response byte reached user space.
    pub first_read_ns: Option<u64>,
    /// Application bytes written and read for this request.
    pub app_out: u64,
    pub app_in: u64,
}

/// Shared between the two streams and the prober.
#[derive(Debug, Default)]
pub(crate) struct IoLog {
    pub raw_out: u64,
    /// Bytes handed on to TLS or HTTP.
    pub raw_in: u64,
    /// Bytes read from the socket (ahead of `raw_in` by what is buffered).
    pub raw_in_socket: u64,
    /// Present on TLS connections.
    pub records: Option<RecordCursor>,
    /// Unprivileged mode: the socket's own timestamps.
    pub stamps: Option<Stamps>,
    /// HTTP/2: the frames each way (None: HTTP/1.x).
    pub h2: Option<H2Io>,
    armed: bool,
    pub req: RequestIo,
}

/// What the streams see of an HTTP/2 connection: its frames, so that a
/// request's marks are its own frames' (not the connection's SETTINGS,
/// WINDOW_UPDATE or PING), and the PING round trip.
#[derive(Debug)]
pub(crate) struct H2Io {
    inbound: FrameScanner,
    outbound: FrameScanner,
    /// Set while a PING of ours is wanted: the next PING written is it.
    pub ping_armed: bool,
    /// Our PING: when it was written (CLOCK_MONOTONIC ns) and the raw
    /// offset where its bytes went out.
    pub ping_out: Option<(u64, u64)>,
    /// Its ACK: when it was read, and the raw offset of what carried it.
    pub ping_in: Option<(u64, u64)>,
}

impl H2Io {
    /// The plaintext offset the next inbound byte has.
    fn inbound_offset(&self) -> u64 {
        self.inbound.offset()
    }

    pub(crate) fn new() -> Self {
        H2Io {
            inbound: FrameScanner::server_side(),
            outbound: FrameScanner::client_side(),
            ping_armed: false,
            ping_out: None,
            ping_in: None,
        }
    }
}

impl IoLog {
    /// Starts the marks of a new request on this connection.
    pub(crate) fn arm(&mut self) {
        self.armed = true;
        self.req = RequestIo::default();
    }

    /// Stops recording and returns what the request saw.
    pub(crate) fn disarm(&mut self) -> RequestIo {
        self.armed = false;
        std::mem::take(&mut self.req)
    }
}

pub(crate) type SharedLog = Arc<Mutex<IoLog>>;

pub(crate) fn lock(l: &SharedLog) -> MutexGuard<'_, IoLog> {
    // A poisoned lock only means another thread panicked mid-update of
    // counters; the counters are still the best we have.
    l.lock().unwrap_or_else(|e| e.into_inner())
}

/// The socket-side stream: counts raw bytes, under TLS delivers one record
/// at a time, and in unprivileged mode reads with recvmsg to keep the
/// kernel's receive time of the data and collects transmit stamps.
pub(crate) struct RawStream {
    inner: TcpStream,
    log: SharedLog,
    buf: Vec<u8>,
    pos: usize,
    end: usize,
    stamped: bool,
}

impl RawStream {
    /// `stamped`: the socket has SO_TIMESTAMPING on (see `stamps`).
    pub(crate) fn new(inner: TcpStream, log: SharedLog, tls: bool, stamped: bool) -> Self {
        {
            let mut l = lock(&log);
            if tls {
                l.records = Some(RecordCursor::default());
            }
            if stamped && l.stamps.is_none() {
                l.stamps = Some(Stamps::new());
            }
        }
        RawStream {
            inner,
            log,
            buf: vec![0; if tls { 32 * 1024 } else { 0 }],
            pos: 0,
            end: 0,
            stamped,
        }
    }

    /// Delivers bytes as they come, not record by record: a proxy's
    /// plain answer to CONNECT comes before TLS.
    pub(crate) fn pause_records(&mut self) {
        lock(&self.log).records = None;
    }

    /// TLS starts here: records are counted from the current offset.
    pub(crate) fn resume_records(&mut self) {
        let mut l = lock(&self.log);
        let at = l.raw_in;
        l.records = Some(RecordCursor {
            record_start: at,
            offset: at,
            ..Default::default()
        });
    }

    #[cfg(test)]
    pub(crate) fn get_ref(&self) -> &TcpStream {
        &self.inner
    }

    /// Reads into `dst` (from the socket); returns bytes read.
    fn read_socket(&mut self, cx: &mut Context<'_>, dst: &mut [u8]) -> Poll<io::Result<usize>> {
        if !self.stamped {
            let mut rb = ReadBuf::new(dst);
            ready!(Pin::new(&mut self.inner).poll_read(cx, &mut rb))?;
            return Poll::Ready(Ok(rb.filled().len()));
        }
        let fd = self.inner.as_raw_fd();
        loop {
            if let Some(s) = lock(&self.log).stamps.as_mut() {
                stamps::drain_errqueue(fd, s);
            }
            ready!(self.inner.poll_read_ready(cx))?;
            match self
                .inner
                .try_io(Interest::READABLE, || stamps::recv(fd, dst))
            {
                Ok((n, ts)) => {
                    let mut log = lock(&self.log);
                    let start = log.raw_in_socket;
                    log.raw_in_socket += n as u64;
                    if let Some(s) = log.stamps.as_mut()
                        && n > 0
                    {
                        let ts = ts.map(|r| stamps::real_to_mono(r, s.mono_minus_real));
                        s.reads.push((start, start + n as u64, ts));
                        s.last = stamps::tcp_info(fd).or(s.last);
                    }
                    return Poll::Ready(Ok(n));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl AsyncRead for RawStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.buf.is_empty() {
            // Plain TCP: pass through and count.
            let dst = out.initialize_unfilled();
            let n = ready!(this.read_socket(cx, dst))?;
            out.advance(n);
            lock(&this.log).raw_in += n as u64;
            return Poll::Ready(Ok(()));
        }
        if this.pos == this.end {
            let mut buf = std::mem::take(&mut this.buf);
            let r = this.read_socket(cx, &mut buf);
            this.buf = buf;
            let n = ready!(r)?;
            this.pos = 0;
            this.end = n;
            if this.end == 0 {
                return Poll::Ready(Ok(()));
            }
        }
        let mut log = lock(&this.log);
        let avail = &this.buf[this.pos..this.end];
        let n = match log.records.as_ref() {
            Some(c) => c.deliverable(avail),
            None => avail.len(),
        }
        .min(out.remaining());
        let chunk = &avail[..n];
        if let Some(c) = log.records.as_mut() {
            c.consume(chunk);
        }
        log.raw_in += n as u64;
        out.put_slice(chunk);
        this.pos += n;
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for RawStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let n = ready!(Pin::new(&mut this.inner).poll_write(cx, buf))?;
        let mut log = lock(&this.log);
        // HTTP/2: the request's own frames set these (AppStream).
        let by_bytes = log.armed && log.h2.is_none();
        if by_bytes && log.req.out_start.is_none() {
            log.req.out_start = Some(log.raw_out);
        }
        let start = log.raw_out;
        log.raw_out += n as u64;
        if by_bytes {
            log.req.out_end = log.raw_out;
        }
        if let Some(s) = log.stamps.as_mut()
            && n > 0
        {
            s.writes.push((start, start + n as u64));
        }
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Some(s) = lock(&this.log).stamps.as_mut() {
            // Last chance to read the transmit stamps: the socket closes next.
            stamps::drain_errqueue(this.inner.as_raw_fd(), s);
        }
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

/// Records a completed application write of `bytes` that started at
/// `start` (CLOCK_MONOTONIC ns) and went out from raw offset `raw_before`.
/// HTTP/2: only a write that carries a stream's HEADERS or DATA is the
/// request's (connection frames, a WINDOW_UPDATE while the body arrives,
/// are not); our PING is noted when one is wanted.
fn note_write(log: &SharedLog, start: u64, n: usize, bytes: &[u8], raw_before: u64) {
    let now = mono_ns();
    let mut log = lock(log);
    let raw_after = log.raw_out;
    if let Some(h2) = log.h2.as_mut() {
        let (frames, stream_bytes) = h2.outbound.feed_marked(bytes);
        if h2.ping_armed
            && h2.ping_out.is_none()
            && frames.iter().any(|f| f.kind == PING && f.flags & ACK == 0)
        {
            h2.ping_out = Some((start, raw_before));
        }
        if !(log.armed && stream_bytes) {
            return;
        }
        log.req.out_start.get_or_insert(raw_before);
        log.req.out_end = raw_after;
    }
    if log.armed {
        log.req.first_write_ns.get_or_insert(start);
        log.req.last_write_ns = Some(now);
        log.req.app_out += n as u64;
    }
}

/// The HTTP-side stream: user-space times of the request and its response.
pub(crate) struct AppStream<S> {
    inner: S,
    log: SharedLog,
}

impl<S> AppStream<S> {
    pub(crate) fn new(inner: S, log: SharedLog) -> Self {
        AppStream { inner, log }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for AppStream<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = out.filled().len();
        ready!(Pin::new(&mut this.inner).poll_read(cx, out))?;
        let n = (out.filled().len() - before) as u64;
        if n > 0 {
            let now = mono_ns();
            let mut log = lock(&this.log);
            // Where what was just read came from: the TLS record just
            // delivered, or the raw bytes themselves.
            let origin = |log: &IoLog, at: u64| match log.records.as_ref() {
                Some(c) => c.record_start,
                None => log.raw_in - n + at,
            };
            if log.h2.is_some() {
                let armed = log.armed && log.req.first_read_ns.is_none();
                let (mut headers_at, mut ack_at) = (None, None);
                if let Some(h2) = log.h2.as_mut() {
                    let base = h2.inbound_offset();
                    for f in h2.inbound.feed(&out.filled()[before..]) {
                        let at = f.offset.saturating_sub(base);
                        if f.kind == HEADERS && f.stream != 0 && headers_at.is_none() {
                            headers_at = Some(at);
                        }
                        if f.kind == PING && f.flags & ACK != 0 && h2.ping_out.is_some() {
                            ack_at.get_or_insert(at);
                        }
                    }
                }
                if let Some(at) = ack_at {
                    let o = origin(&log, at);
                    if let Some(h2) = log.h2.as_mut() {
                        h2.ping_in.get_or_insert((now, o));
                    }
                }
                if let (true, Some(at)) = (armed, headers_at) {
                    log.req.first_read_ns = Some(now);
                    log.req.in_start = Some(origin(&log, at));
                }
                if log.armed {
                    log.req.app_in += n;
                }
                return Poll::Ready(Ok(()));
            }
            if log.armed {
                if log.req.first_read_ns.is_none() {
                    log.req.first_read_ns = Some(now);
                    let start = match log.records.as_ref() {
                        // The record just delivered produced this plaintext.
                        Some(c) => c.record_start,
                        None => log.raw_in - n,
                    };
                    log.req.in_start = Some(start);
                }
                log.req.app_in += n;
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for AppStream<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let start = mono_ns();
        let raw_before = lock(&this.log).raw_out;
        let n = ready!(Pin::new(&mut this.inner).poll_write(cx, buf))?;
        note_write(&this.log, start, n, &buf[..n], raw_before);
        Poll::Ready(Ok(n))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let start = mono_ns();
        let (raw_before, h2) = {
            let l = lock(&this.log);
            (l.raw_out, l.h2.is_some())
        };
        let n = ready!(Pin::new(&mut this.inner).poll_write_vectored(cx, bufs))?;
        // HTTP/2's frames are read from the bytes written, in order (the
        // first n of the slices); HTTP/1 needs only the count.
        let mut written = Vec::new();
        if h2 {
            for b in bufs {
                let take = (n - written.len()).min(b.len());
                written.extend_from_slice(&b[..take]);
                if written.len() == n {
                    break;
                }
            }
        }
        note_write(&this.log, start, n, &written, raw_before);
        Poll::Ready(Ok(n))
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn record(ty: u8, body: &[u8]) -> Vec<u8> {
        let mut v = vec![ty, 3, 3];
        v.extend_from_slice(&(body.len() as u16).to_be_bytes());
        v.extend_from_slice(body);
        v
    }

    #[test]
    fn cursor_stops_at_record_boundaries() {
        let mut s = record(22, &[1; 10]);
        s.extend(record(23, &[2; 300]));
        s.extend(record(23, &[]));
        s.extend(record(23, &[3; 4]));
        let mut c = RecordCursor::default();
        let mut starts = vec![];
        let mut pos = 0;
        // deliver in steps of at most 7 bytes to exercise partial headers
        while pos < s.len() {
            let avail = &s[pos..(pos + 7).min(s.len())];
            let n = c.deliverable(avail);
            assert!(n > 0);
            c.consume(&avail[..n]);
            if !starts.contains(&c.record_start) {
                starts.push(c.record_start);
            }
            pos += n;
        }
        assert_eq!(starts, vec![0, 15, 320, 325]);
        assert_eq!(c.offset, s.len() as u64);
        // whole buffer at once: one record at a time
        let mut c = RecordCursor::default();
        assert_eq!(c.deliverable(&s), 15);
        c.consume(&s[..15]);
        assert_eq!(c.deliverable(&s[15..]), 305);
        c.consume(&s[15..320]);
        assert_eq!(c.record_start, 15);
    }

    /// A connected pair on loopback: (client, server).
    async fn pair() -> (TcpStream, TcpStream) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let (c, s) = tokio::join!(TcpStream::connect(addr), l.accept());
        (c.unwrap(), s.unwrap().0)
    }

    #[tokio::test]
    async fn raw_stream_limits_reads_and_app_stream_marks_request() {
        let (client, mut server) = pair().await;
        let log: SharedLog = Arc::default();
        let raw = RawStream::new(client, log.clone(), true, false);
        let mut app = AppStream::new(raw, log.clone());
        let mut wire = record(22, &[0; 20]); // a handshake record before the request
        wire.extend(record(23, &[1; 100]));
        wire.extend(record(23, &[2; 50]));
        server.write_all(&wire).await.unwrap();
        app.write_all(b"hello").await.unwrap(); // before arming: not the request
        lock(&log).arm();
        app.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        let mut b = [0u8; 4096];
        let n = app.read(&mut b).await.unwrap();
        assert_eq!(n, 25, "first read stops at the first record's end");
        let r = lock(&log).disarm();
        assert_eq!(r.out_start, Some(5));
        assert_eq!(r.out_end, 23);
        assert_eq!(r.in_start, Some(0));
        assert!(r.first_write_ns.unwrap() <= r.first_read_ns.unwrap());
        // the next record is delivered on its own and the cursor knows its start
        lock(&log).arm();
        let n = app.read(&mut b).await.unwrap();
        assert_eq!(n, 105);
        assert_eq!(lock(&log).disarm().in_start, Some(25));
    }

    #[tokio::test]
    async fn plain_stream_passes_through_and_counts() {
        let (client, mut server) = pair().await;
        let log: SharedLog = Arc::default();
        let mut app = AppStream::new(
            RawStream::new(client, log.clone(), false, false),
            log.clone(),
        );
        server.write_all(b"first response").await.unwrap();
        let mut b = [0u8; 14];
        app.read_exact(&mut b).await.unwrap();
        lock(&log).arm();
        app.write_all(b"req").await.unwrap();
        server.write_all(b"second").await.unwrap();
        let mut b = [0u8; 6];
        app.read_exact(&mut b).await.unwrap();
        let r = lock(&log).disarm();
        assert_eq!(r.out_start, Some(0));
        assert_eq!(r.out_end, 3);
        assert_eq!(r.in_start, Some(14));
        assert_eq!(r.app_in, 6);
    }

    /// Unprivileged mode on loopback: every read is recorded by offset with
    /// the kernel's receive time, every write gets a transmit stamp and an
    /// ACK stamp, keyed by offset.
    #[tokio::test]
    async fn stamped_stream_records_kernel_times() {
        let (client, mut server) = pair().await;
        stamps::enable(client.as_raw_fd()).unwrap();
        let log: SharedLog = Arc::default();
        let mut raw = RawStream::new(client, log.clone(), false, true);
        // The kernel turns receive stamping on asynchronously (a static key
        // flipped from a work queue): exchange until a read is stamped.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let mut round = 0u64;
        let (before, after) = loop {
            let before = mono_ns();
            raw.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
            let mut b = [0u8; 18];
            server.read_exact(&mut b).await.unwrap();
            server.write_all(b"HTTP/1.1 200 OK\r\n").await.unwrap();
            let mut r = [0u8; 17];
            raw.read_exact(&mut r).await.unwrap();
            let after = mono_ns();
            round += 1;
            let stamped = lock(&log)
                .stamps
                .as_ref()
                .unwrap()
                .reads
                .last()
                .unwrap()
                .2
                .is_some();
            if stamped {
                break (before, after);
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no receive stamp in {round} rounds"
            );
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        };
        // The ACK stamp of the last request may come a little after the response.
        let fd = raw.get_ref().as_raw_fd();
        let want = 18 * round - 1;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
        loop {
            let enough = {
                let mut l = lock(&log);
                let s = l.stamps.as_mut().unwrap();
                stamps::drain_errqueue(fd, s);
                s.tx.iter()
                    .any(|&(k, kind, _)| k as u64 == want && kind == 2)
            };
            if enough || std::time::Instant::now() > deadline {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        let s = lock(&log).stamps.clone().unwrap();
        assert_eq!(s.writes.len() as u64, round);
        assert_eq!(*s.writes.last().unwrap(), (18 * (round - 1), 18 * round));
        let (a, b, ts) = *s.reads.last().unwrap();
        assert_eq!((a, b), (17 * (round - 1), 17 * round));
        let ts = ts.unwrap();
        assert!(before <= ts && ts <= after, "{before} <= {ts} <= {after}");
        assert!(
            s.tx.iter()
                .any(|&(k, kind, t)| k as u64 == want && kind == 0 && t >= before && t <= after),
            "{:?}",
            s.tx
        );
        assert!(
            s.tx.iter()
                .any(|&(k, kind, _)| k as u64 == want && kind == 2),
            "ACK stamp: {:?}",
            s.tx
        );
        let f = s.flow(probe_common::FlowKey::default());
        let last_req = 18 * (round - 1) as u32;
        assert!(f.out_covering(last_req).is_some());
        assert!(f.in_covering(17 * (round - 1) as u32).is_some());
        assert!(f.ack_covering(18 * round as u32, 0).is_some());
    }
}
