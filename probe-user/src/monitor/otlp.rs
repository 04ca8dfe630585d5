//! `--otlp URL`: the monitor's checks pushed to an OpenTelemetry collector
//! over OTLP/HTTP with protobuf bodies (`POST /v1/metrics`, Content-Type
//! `application/x-protobuf`), every `--otlp-interval`. The series are
//! cumulative, so a push that fails loses nothing: the next carries it. One
//! push at a time; a push still running when the next is due makes that
//! one wait for the interval after.

use crate::{
    active::prober::{self, HttpVersion},
    model::{record::Record, targets::Target},
    output::{metrics::Outcome, otlp::OtlpAgg},
};
use anyhow::{Context, Result, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, header};
use std::{
    cell::Cell,
    path::PathBuf,
    rc::Rc,
    sync::Arc,
    time::{Duration, Instant},
};
use tokio::io::{AsyncRead, AsyncWrite};

/// A push that takes longer than this is abandoned (and retried with the
/// next interval's data).
const PUSH_TIMEOUT: Duration = Duration::from_secs(10);

/// Where and how to push.
struct Endpoint {
    url: url::Url,
    headers: Vec<(header::HeaderName, header::HeaderValue)>,
    tls: Option<Arc<rustls::ClientConfig>>,
}

/// The monitor's OTLP side: the aggregates, the schedule, the endpoint.
pub(crate) struct Otlp {
    pub agg: OtlpAgg,
    every: Duration,
    next: Instant,
    endpoint: Rc<Endpoint>,
    busy: Rc<Cell<bool>>,
    /// Failed pushes in a row (reported on the first and every tenth).
    failures: Rc<Cell<u32>>,
}

/// The endpoint's URL: a bare collector address gets OTLP's metrics path.
pub(crate) fn endpoint_url(s: &str) -> Result<url::Url> {
    let mut u = url::Url::parse(s)
        .with_context(|| format!("--otlp {s}: not a URL (e.g. http://127.0.0.1:4318)"))?;
    if !matches!(u.scheme(), "http" | "https") || u.host().is_none() {
        bail!(
            "--otlp {s}: an http:// or https:// collector (OTLP/HTTP), e.g. http://127.0.0.1:4318"
        );
    }
    if u.path().is_empty() || u.path() == "/" {
        u.set_path("/v1/metrics");
    }
    Ok(u)
}

/// `NAME=VALUE` pairs (flags, or OTEL_EXPORTER_OTLP_HEADERS' comma list).
pub(crate) fn pairs<'a>(
    items: impl Iterator<Item = &'a str>,
    what: &str,
) -> Result<Vec<(String, String)>> {
    items
        .filter(|s| !s.trim().is_empty())
        .map(|s| {
            let (k, v) = s
                .split_once('=')
                .with_context(|| format!("{what} {s:?}: expected NAME=VALUE"))?;
            let dec = |x: &str| {
                percent_encoding::percent_decode_str(x.trim())
                    .decode_utf8_lossy()
                    .into_owned()
            };
            Ok((dec(k), dec(v)))
        })
        .collect()
}

impl Otlp {
    pub(crate) fn new(
        endpoint: &str,
        every: Duration,
        headers: &[(String, String)],
        resource: Vec<(String, String)>,
        cacert: Option<&PathBuf>,
        insecure: bool,
        start_ns: u64,
    ) -> Result<Otlp> {
        let url = endpoint_url(endpoint)?;
        let tls = if url.scheme() == "https" {
            Some(Arc::new(
                prober::tls_config(cacert, insecure, HttpVersion::Http11)
                    .context("cannot set up TLS for --otlp (check --cacert)")?,
            ))
        } else {
            None
        };
        let headers = headers
            .iter()
            .map(|(k, v)| {
                Ok((
                    header::HeaderName::from_bytes(k.as_bytes())
                        .with_context(|| format!("--otlp-header: {k:?} is not a header name"))?,
                    header::HeaderValue::from_str(v).with_context(|| {
                        format!("--otlp-header: the value of {k} is not a header value")
                    })?,
                ))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Otlp {
            agg: OtlpAgg::new(resource, start_ns),
            every,
            next: Instant::now() + every,
            endpoint: Rc::new(Endpoint { url, headers, tls }),
            busy: Rc::new(Cell::new(false)),
            failures: Rc::new(Cell::new(0)),
        })
    }

    pub(crate) fn url(&self) -> &url::Url {
        &self.endpoint.url
    }

    pub(crate) fn observe(&mut self, t: &Target, recs: &[Record], o: &Outcome) {
        self.agg.observe(t, recs, o, unix_ns());
    }

    /// Starts a push when one is due and none is running.
    pub(crate) fn tick(&mut self) {
        if Instant::now() < self.next {
            return;
        }
        self.next = Instant::now() + self.every;
        if self.busy.get() {
            return;
        }
        let Some(req) = self.agg.request(unix_ns()) else {
            return;
        };
        let body = prost::Message::encode_to_vec(&req);
        let (ep, busy, failures) = (
            self.endpoint.clone(),
            self.busy.clone(),
            self.failures.clone(),
        );
        busy.set(true);
        tokio::task::spawn_local(async move {
            let r = tokio::time::timeout(PUSH_TIMEOUT, push(&ep, body)).await;
            busy.set(false);
            report(
                &ep.url,
                &failures,
                r.unwrap_or_else(|_| Err(anyhow::anyhow!("no answer within {PUSH_TIMEOUT:?}"))),
            );
        });
    }

    /// The last push, on the way out (bounded: shutting down must not hang
    /// on an absent collector).
    pub(crate) async fn flush(&mut self) {
        let Some(req) = self.agg.request(unix_ns()) else {
            return;
        };
        let body = prost::Message::encode_to_vec(&req);
        let r = tokio::time::timeout(Duration::from_secs(2), push(&self.endpoint, body)).await;
        report(
            &self.endpoint.url,
            &self.failures,
            r.unwrap_or_else(|_| Err(anyhow::anyhow!("no answer within 2 s"))),
        );
    }
}

fn report(url: &url::Url, failures: &Cell<u32>, r: Result<()>) {
    match r {
        Ok(()) => {
            if failures.get() > 0 {
                eprintln!("synack monitor: OTLP push to {url} works again");
            }
            failures.set(0);
        }
        Err(e) => {
            let n = failures.get() + 1;
            failures.set(n);
            if n == 1 || n.is_multiple_of(10) {
                eprintln!(
                    "synack monitor: OTLP push to {url} failed ({n} in a row): {e:#}; the next push carries the same (cumulative) series"
                );
            }
        }
    }
}

fn unix_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

async fn push(ep: &Endpoint, body: Vec<u8>) -> Result<()> {
    let host = ep
        .url
        .host_str()
        .context("the endpoint has no host")?
        .to_string();
    let port = ep
        .url
        .port_or_known_default()
        .context("the endpoint has no port")?;
    let tcp =
        tokio::net::TcpStream::connect((host.trim_start_matches('[').trim_end_matches(']'), port))
            .await
            .with_context(|| format!("cannot connect to {host}:{port}"))?;
    match &ep.tls {
        None => send(tcp, ep, &host, body).await,
        Some(tls) => {
            let name = rustls_pki_types::ServerName::try_from(
                host.trim_start_matches('[')
                    .trim_end_matches(']')
                    .to_string(),
            )
            .with_context(|| format!("{host} is not a TLS server name"))?;
            let s = tokio_rustls::TlsConnector::from(tls.clone())
                .connect(name, tcp)
                .await
                .context("TLS to the collector")?;
            send(s, ep, &host, body).await
        }
    }
}

async fn send<S>(io: S, ep: &Endpoint, host: &str, body: Vec<u8>) -> Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin + 'static,
{
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(io))
            .await
            .context("HTTP to the collector")?;
    tokio::task::spawn_local(async move {
        let _ = conn.await;
    });
    let authority = match ep.url.port() {
        Some(p) => format!("{host}:{p}"),
        None => host.to_string(),
    };
    let path = match ep.url.query() {
        Some(q) => format!("{}?{q}", ep.url.path()),
        None => ep.url.path().to_string(),
    };
    let mut req = Request::post(path)
        .header(header::HOST, authority)
        .header(header::CONTENT_TYPE, "application/x-protobuf")
        .header(
            header::USER_AGENT,
            concat!("synack/", env!("CARGO_PKG_VERSION")),
        );
    for (k, v) in &ep.headers {
        req = req.header(k, v);
    }
    let req = req
        .body(Full::new(Bytes::from(body)))
        .context("the push request")?;
    let resp = sender
        .send_request(req)
        .await
        .context("sending to the collector")?;
    let status = resp.status();
    if status.is_success() {
        return Ok(());
    }
    let text = resp
        .into_body()
        .collect()
        .await
        .map(|b| {
            String::from_utf8_lossy(&b.to_bytes())
                .chars()
                .take(200)
                .collect::<String>()
        })
        .unwrap_or_default();
    bail!("HTTP {status}: {text}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_and_pairs() {
        assert_eq!(
            endpoint_url("http://127.0.0.1:4318").unwrap().as_str(),
            "http://127.0.0.1:4318/v1/metrics"
        );
        assert_eq!(
            endpoint_url("https://c.example/otlp/v1/metrics")
                .unwrap()
                .path(),
            "/otlp/v1/metrics"
        );
        assert!(endpoint_url("grpc://c:4317").is_err());
        assert!(endpoint_url("c:4318").is_err());
        assert_eq!(
            pairs("api-key=a%20b, x=1".split(','), "h").unwrap(),
            vec![
                ("api-key".to_string(), "a b".to_string()),
                ("x".to_string(), "1".to_string())
            ]
        );
        assert!(
            pairs(["nokey"].into_iter(), "--otlp-header")
                .unwrap_err()
                .to_string()
                .contains("NAME=VALUE")
        );
    }
}
