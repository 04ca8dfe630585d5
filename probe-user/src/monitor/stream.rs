//! /metrics written while it is sent: the exposition of 10,000 targets is
//! ~150 MiB of text, which a whole-body response would hold in memory (and
//! then some, as the string grows) at every scrape.

use crate::output::metrics::Metrics;
use bytes::Bytes;
use hyper::body::{Body, Frame};
use std::{
    fmt,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};
use tokio::sync::mpsc;

/// Bytes encoded before they are handed to the connection.
const CHUNK: usize = 64 * 1024;
/// Chunks in flight: the encoder waits for a slow scraper beyond this, so
/// a scrape holds at most this many chunks.
const IN_FLIGHT: usize = 4;

/// The encoder stopped before the end (an error or a panic): the body
/// fails, so that hyper aborts the response instead of ending it cleanly
/// and a classic-format scraper cannot take half a page for all of it.
#[derive(Debug)]
pub(crate) struct Incomplete;

impl fmt::Display for Incomplete {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the metrics could not be encoded to the end")
    }
}

impl std::error::Error for Incomplete {}

/// A response body fed, chunk by chunk, by an encoder on a blocking thread.
pub(crate) struct ChunkBody(mpsc::Receiver<Result<Bytes, Incomplete>>);

impl Body for ChunkBody {
    type Data = Bytes;
    type Error = Incomplete;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Incomplete>>> {
        self.0.poll_recv(cx).map(|c| c.map(|b| b.map(Frame::data)))
    }
}

/// Buffers the encoder's output and sends it on in CHUNK-sized pieces.
struct ChunkWriter {
    buf: String,
    tx: mpsc::Sender<Result<Bytes, Incomplete>>,
}

impl ChunkWriter {
    fn flush(&mut self) -> fmt::Result {
        let b = Bytes::from(std::mem::replace(
            &mut self.buf,
            String::with_capacity(CHUNK),
        ));
        // The scraper hung up: stop encoding.
        self.tx.blocking_send(Ok(b)).map_err(|_| fmt::Error)
    }
}

impl fmt::Write for ChunkWriter {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.buf.push_str(s);
        if self.buf.len() >= CHUNK {
            self.flush()?;
        }
        Ok(())
    }
}

/// Starts encoding the metrics on a blocking thread; the body yields them
/// as they come and ends when all is written (or the scraper left).
pub(crate) fn body(m: Arc<Metrics>, openmetrics: bool) -> ChunkBody {
    let (tx, rx) = mpsc::channel(IN_FLIGHT);
    tokio::task::spawn_blocking(move || {
        let mut w = ChunkWriter {
            buf: String::with_capacity(CHUNK),
            tx: tx.clone(),
        };
        let wrote = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            m.write(&mut w, openmetrics)
                .and_then(|()| if w.buf.is_empty() { Ok(()) } else { w.flush() })
        }));
        if !matches!(wrote, Ok(Ok(()))) {
            // Fails the response (or finds the scraper already gone).
            let _ = tx.blocking_send(Err(Incomplete));
        }
    });
    ChunkBody(rx)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::output::metrics::Metrics;
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn streamed_body_is_the_whole_exposition() {
        let m = Arc::new(Metrics::new());
        let list: Vec<_> = (0..2000)
            .flat_map(|i| {
                crate::model::targets::parse(&format!("http://h{i}/ name=t{i} tag=env:prod")).0
            })
            .collect();
        m.set_targets(&list, 0);
        let whole = m.encode();
        assert!(whole.len() > 4 * CHUNK, "{} bytes", whole.len());
        let mut b = body(m.clone(), true);
        let mut got = Vec::new();
        let mut chunks = 0;
        while let Some(f) = b.frame().await {
            let d = f
                .map(|f| f.into_data().unwrap_or_default())
                .unwrap_or_default();
            assert!(d.len() <= 2 * CHUNK, "one chunk of {} bytes", d.len());
            got.extend_from_slice(&d);
            chunks += 1;
        }
        assert!(chunks > 4, "{chunks} chunks");
        assert_eq!(String::from_utf8(got).unwrap_or_default(), whole);
    }
}
