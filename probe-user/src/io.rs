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

use crate::clock::mono_ns;
use std::{
    io,
    pin::Pin,
    sync::{Arc, Mutex, MutexGuard},
    task::{Context, Poll, ready},
};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Splits a byte stream into TLS records (5-byte header: type, version,
/// 16-bit length; then the body).
#[derive(Clone, Debug, Default)]
pub struct RecordCursor {
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
    pub fn deliverable(&self, avail: &[u8]) -> usize {
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
    pub fn consume(&mut self, mut b: &[u8]) {
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
pub struct RequestIo {
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
pub struct IoLog {
    pub raw_out: u64,
    pub raw_in: u64,
    /// Present on TLS connections.
    pub records: Option<RecordCursor>,
    armed: bool,
    pub req: RequestIo,
}

impl IoLog {
    /// Starts the marks of a new request on this connection.
    pub fn arm(&mut self) {
        self.armed = true;
        self.req = RequestIo::default();
    }

    /// Stops recording and returns what the request saw.
    pub fn disarm(&mut self) -> RequestIo {
        self.armed = false;
        std::mem::take(&mut self.req)
    }
}

pub type SharedLog = Arc<Mutex<IoLog>>;

fn lock(l: &SharedLog) -> MutexGuard<'_, IoLog> {
    // A poisoned lock only means another thread panicked mid-update of
    // counters; the counters are still the best we have.
    l.lock().unwrap_or_else(|e| e.into_inner())
}

/// The socket-side stream: counts raw bytes, and under TLS delivers one
/// record at a time.
pub struct RawStream<S> {
    inner: S,
    log: SharedLog,
    buf: Vec<u8>,
    pos: usize,
    end: usize,
}

impl<S> RawStream<S> {
    pub fn new(inner: S, log: SharedLog, tls: bool) -> Self {
        if tls {
            lock(&log).records = Some(RecordCursor::default());
        }
        RawStream {
            inner,
            log,
            buf: vec![0; if tls { 32 * 1024 } else { 0 }],
            pos: 0,
            end: 0,
        }
    }

    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for RawStream<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.buf.is_empty() {
            // Plain TCP: pass through and count.
            let before = out.filled().len();
            ready!(Pin::new(&mut this.inner).poll_read(cx, out))?;
            lock(&this.log).raw_in += (out.filled().len() - before) as u64;
            return Poll::Ready(Ok(()));
        }
        if this.pos == this.end {
            let mut rb = ReadBuf::new(&mut this.buf);
            ready!(Pin::new(&mut this.inner).poll_read(cx, &mut rb))?;
            this.pos = 0;
            this.end = rb.filled().len();
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

impl<S: AsyncWrite + Unpin> AsyncWrite for RawStream<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let n = ready!(Pin::new(&mut this.inner).poll_write(cx, buf))?;
        let mut log = lock(&this.log);
        if log.armed && log.req.out_start.is_none() {
            log.req.out_start = Some(log.raw_out);
        }
        log.raw_out += n as u64;
        if log.armed {
            log.req.out_end = log.raw_out;
        }
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// Records a completed application write of `n` bytes that started at `start`.
fn note_write(log: &SharedLog, start: u64, n: usize) {
    let now = mono_ns();
    let mut log = lock(log);
    if log.armed {
        log.req.first_write_ns.get_or_insert(start);
        log.req.last_write_ns = Some(now);
        log.req.app_out += n as u64;
    }
}

/// The HTTP-side stream: user-space times of the request and its response.
pub struct AppStream<S> {
    inner: S,
    log: SharedLog,
}

impl<S> AppStream<S> {
    pub fn new(inner: S, log: SharedLog) -> Self {
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
        let n = ready!(Pin::new(&mut this.inner).poll_write(cx, buf))?;
        note_write(&this.log, start, n);
        Poll::Ready(Ok(n))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let start = mono_ns();
        let n = ready!(Pin::new(&mut this.inner).poll_write_vectored(cx, bufs))?;
        note_write(&this.log, start, n);
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

    #[tokio::test]
    async fn raw_stream_limits_reads_and_app_stream_marks_request() {
        let (client, mut server) = tokio::io::duplex(1 << 16);
        let log: SharedLog = Arc::default();
        let raw = RawStream::new(client, log.clone(), true);
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
        let (client, mut server) = tokio::io::duplex(1 << 16);
        let log: SharedLog = Arc::default();
        let mut app = AppStream::new(RawStream::new(client, log.clone(), false), log.clone());
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
}
