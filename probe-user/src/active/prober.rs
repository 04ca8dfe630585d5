//! The active prober: makes HTTP(S) requests on sockets of its own, so each
//! connection's socket cookie is registered with the kernel before its SYN
//! leaves, and records the user-space marks of every phase.

use crate::{
    active::io::{AppStream, IoLog, RawStream, SharedLog},
    host::clock::mono_ns,
    kernel::bpf::{Hub, Kernel, SharedKernel},
    model::flows::{Flow, flow_key},
    model::record::{ErrorInfo, ErrorKind, Record},
    model::timeline::{self, ConnMarks, RequestMarks},
};
use bytes::Bytes;
use http::{HeaderName, HeaderValue, Method, Request, Uri, header};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use probe_common::{FlowKey, flow::TCP_SYN};
use rustls::{
    ClientConfig, RootCertStore,
    client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    pki_types::{CertificateDer, ServerName, UnixTime, pem::PemObject},
};
use std::{
    net::{IpAddr, SocketAddr},
    os::fd::AsRawFd,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::Duration,
};
use thiserror::Error;
use tokio::{net::TcpSocket, time::Instant};

/// Which address family to use.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) enum Family {
    #[default]
    Any,
    V4,
    V6,
}

/// A `--resolve HOST:PORT:ADDR` override.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resolve {
    pub host: String,
    pub port: u16,
    pub addr: IpAddr,
}

/// A --resolve argument that is not HOST:PORT:ADDR.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("expected HOST:PORT:ADDR (as curl's --resolve), got {0:?}")]
pub struct BadResolve(String);

impl std::str::FromStr for Resolve {
    type Err = BadResolve;
    fn from_str(s: &str) -> Result<Self, BadResolve> {
        let err = || BadResolve(s.to_string());
        let (host, rest) = s.split_once(':').ok_or_else(err)?;
        let (port, addr) = rest.split_once(':').ok_or_else(err)?;
        let addr = addr.trim_start_matches('[').trim_end_matches(']');
        Ok(Resolve {
            host: host.to_ascii_lowercase(),
            port: port.parse().map_err(|_| err())?,
            addr: addr.parse().map_err(|_| err())?,
        })
    }
}

/// Everything that shapes the requests.
#[derive(Clone, Debug)]
pub(crate) struct Options {
    pub method: Option<Method>,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub body: Option<Bytes>,
    pub max_time: Option<Duration>,
    pub follow: bool,
    pub max_redirs: u32,
    pub reuse: u32,
    pub resolve: Vec<Resolve>,
    pub family: Family,
    pub cacert: Option<PathBuf>,
    pub insecure: bool,
    /// Print every kernel event of our connections to stderr.
    pub dump_events: bool,
    /// After each connection, find the TCP endpoint's distance with TTL-limited SYNs.
    pub path_probe: bool,
    /// Where response bodies (and with `include_head` their heads) go as
    /// they arrive, as curl writes them (stdout or -o FILE); None drops them.
    pub sink: Option<BodySink>,
    /// curl's -i: the head goes to the sink before the body.
    pub include_head: bool,
    /// -x, --noproxy, -U and the proxy environment.
    pub proxy: crate::model::proxy::ProxyConfig,
    /// Which HTTP versions to offer (ALPN) or speak.
    pub http: HttpVersion,
}

/// The HTTP versions a connection may speak, as curl's flags choose them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) enum HttpVersion {
    /// HTTPS: h2 and http/1.1 offered in ALPN, the server picks (curl's
    /// default); plain HTTP: HTTP/1.1.
    #[default]
    Auto,
    /// HTTP/1.1 only (--http1.1).
    Http11,
    /// HTTP/2 with no negotiation (--http2-prior-knowledge): h2 in ALPN
    /// alone over TLS, h2c straight away over plain TCP.
    PriorKnowledge,
}

impl HttpVersion {
    /// The ALPN protocols to offer, most wanted first.
    fn alpn(self) -> Vec<Vec<u8>> {
        match self {
            HttpVersion::Auto => vec![b"h2".to_vec(), b"http/1.1".to_vec()],
            HttpVersion::Http11 => vec![b"http/1.1".to_vec()],
            HttpVersion::PriorKnowledge => vec![b"h2".to_vec()],
        }
    }
}

/// A shared writer for response bodies. A failed write is kept (curl's
/// exit code 23) and later bodies are dropped.
#[derive(Clone)]
pub(crate) struct BodySink(Arc<Mutex<SinkState>>);

struct SinkState {
    out: Box<dyn std::io::Write + Send>,
    failed: Option<std::io::Error>,
}

impl std::fmt::Debug for BodySink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BodySink")
    }
}

impl BodySink {
    pub(crate) fn new(out: Box<dyn std::io::Write + Send>) -> Self {
        BodySink(Arc::new(Mutex::new(SinkState { out, failed: None })))
    }

    fn write(&self, bytes: &[u8]) {
        let mut s = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if s.failed.is_none()
            && let Err(e) = s.out.write_all(bytes)
        {
            s.failed = Some(e);
        }
    }

    /// Flushes; the first write error, if any (taken: reported once).
    pub(crate) fn finish(&self) -> Option<std::io::Error> {
        let mut s = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if s.failed.is_none()
            && let Err(e) = s.out.flush()
        {
            s.failed = Some(e);
        }
        s.failed.take()
    }
}

#[derive(Debug, Error)]
pub(crate) enum TlsSetupError {
    #[error("cannot read CA certificates from {path}: {source}")]
    CaFile {
        path: PathBuf,
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    #[error("{path} holds no usable CA certificate")]
    NoCa { path: PathBuf },
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
}

/// The TLS client configuration: `--cacert` replaces the system roots (as in
/// curl); without system roots the bundled webpki roots are used.
pub(crate) fn tls_config(
    cacert: Option<&PathBuf>,
    insecure: bool,
    http: HttpVersion,
) -> Result<ClientConfig, TlsSetupError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = RootCertStore::empty();
    let mut given: Vec<CertificateDer<'static>> = Vec::new();
    if let Some(path) = cacert {
        let certs = CertificateDer::pem_file_iter(path)
            .and_then(|it| it.collect::<Result<Vec<_>, _>>())
            .map_err(|source| TlsSetupError::CaFile {
                path: path.clone(),
                source,
            })?;
        given.clone_from(&certs);
        let (added, _) = roots.add_parsable_certificates(certs);
        if added == 0 {
            return Err(TlsSetupError::NoCa { path: path.clone() });
        }
    } else {
        let native = rustls_native_certs::load_native_certs();
        roots.add_parsable_certificates(native.certs);
        if roots.is_empty() {
            roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        }
    }
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?;
    let mut cfg = if insecure {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAny(provider)))
            .with_no_client_auth()
    } else if !given.is_empty() {
        let inner = rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            provider.clone(),
        )
        .build()
        .map_err(|e| TlsSetupError::Rustls(rustls::Error::General(e.to_string())))?;
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(GivenOrChained {
                inner,
                given,
                provider,
            }))
            .with_no_client_auth()
    } else {
        builder.with_root_certificates(roots).with_no_client_auth()
    };
    cfg.alpn_protocols = http.alpn();
    Ok(cfg)
}

/// `--insecure`: accepts any certificate, still checks handshake signatures.
#[derive(Debug)]
struct AcceptAny(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// `--cacert`: a chain to one of the file's certificates (webpki), or, as
/// curl with OpenSSL takes it, the server's certificate itself in the file:
/// a self-signed certificate made with `openssl req -x509` is marked as a
/// CA, which webpki refuses as an end entity (CaUsedAsEndEntity). Such a
/// certificate is still held to the server's name and its validity dates.
#[derive(Debug)]
struct GivenOrChained {
    inner: Arc<rustls::client::WebPkiServerVerifier>,
    given: Vec<CertificateDer<'static>>,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl ServerCertVerifier for GivenOrChained {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let chained =
            self.inner
                .verify_server_cert(end_entity, intermediates, server_name, ocsp, now);
        match chained {
            Err(e) if self.given.iter().any(|c| c.as_ref() == end_entity.as_ref()) => {
                let parsed = rustls::server::ParsedCertificate::try_from(end_entity)?;
                rustls::client::verify_server_name(&parsed, server_name)?;
                let secs = i64::try_from(now.as_secs()).unwrap_or(i64::MAX);
                let validity = x509_parser::parse_x509_certificate(end_entity.as_ref())
                    .map(|(_, c)| c.validity().clone());
                match validity {
                    Ok(v) if v.not_before.timestamp() > secs => Err(
                        rustls::Error::InvalidCertificate(rustls::CertificateError::NotValidYet),
                    ),
                    Ok(v) if v.not_after.timestamp() < secs => Err(
                        rustls::Error::InvalidCertificate(rustls::CertificateError::Expired),
                    ),
                    Ok(_) => Ok(ServerCertVerified::assertion()),
                    // Unparsable for x509-parser: webpki's own refusal stands.
                    Err(_) => Err(e),
                }
            }
            other => other,
        }
    }
    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            m,
            c,
            d,
            &self.provider.signature_verification_algorithms,
        )
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            m,
            c,
            d,
            &self.provider.signature_verification_algorithms,
        )
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// A request target after URL parsing.
#[derive(Clone, Debug)]
struct Target {
    url: url::Url,
    tls: bool,
    host: String,
    port: u16,
}

fn parse_target(s: &str) -> Result<Target, ErrorInfo> {
    let url = url::Url::parse(s).map_err(|e| {
        ErrorInfo::new(
            ErrorKind::InvalidUrl,
            format!("cannot parse URL {s:?}: {e}"),
        )
    })?;
    let tls = match url.scheme() {
        "http" => false,
        "https" => true,
        other => {
            return Err(ErrorInfo::new(
                ErrorKind::UnsupportedScheme,
                format!("scheme {other:?} is not supported: use http:// or https://"),
            ));
        }
    };
    let host = match url.host() {
        Some(url::Host::Ipv6(a)) => a.to_string(),
        Some(h) => h.to_string(),
        None => {
            return Err(ErrorInfo::new(
                ErrorKind::InvalidUrl,
                format!("URL {s:?} has no host"),
            ));
        }
    };
    let port = url
        .port_or_known_default()
        .unwrap_or(if tls { 443 } else { 80 });
    Ok(Target {
        url,
        tls,
        host,
        port,
    })
}

/// The prober and the kernel side it registers its sockets with.
pub(crate) struct Prober {
    pub kernel: Option<SharedKernel>,
    tls: Arc<ClientConfig>,
    opts: Options,
    mode: &'static str,
    /// Where this process's CPU throttling is counted (found once).
    cpu: crate::host::cpustat::CpuSources,
    /// --dump-events lines not yet taken (`take_dump`).
    dump: Vec<String>,
}

/// A request that completed.
struct Done {
    /// What was asked (a same-origin redirect goes on on the connection).
    url: String,
    hop: u32,
    method: Method,
    marks: RequestMarks,
    /// The CPU this process did not get while the request ran.
    stall: crate::model::verdict::ClientStall,
    status: u16,
    via: Option<String>,
    server_timing: Option<f64>,
    response: crate::model::record::ResponseSeen,
    request_bytes: u64,
    response_bytes: u64,
}

/// Why a connection stopped early, with the marks of the request in flight.
struct Failed {
    error: ErrorInfo,
    marks: Option<RequestMarks>,
}

impl Failed {
    fn with(error: ErrorInfo, marks: RequestMarks) -> Self {
        Failed {
            error,
            marks: Some(marks),
        }
    }
}

impl From<ErrorInfo> for Failed {
    fn from(error: ErrorInfo) -> Self {
        Failed { error, marks: None }
    }
}

fn http_error(e: &hyper::Error) -> ErrorInfo {
    let msg = crate::model::record::error_chain(e);
    let kind = if e.is_incomplete_message() || e.is_closed() || e.is_canceled() {
        ErrorKind::Io
    } else if e.is_parse() || e.is_parse_status() {
        ErrorKind::Http
    } else {
        ErrorKind::Io
    };
    ErrorInfo::new(kind, msg)
}

/// What one connection produced before it ended.
struct ConnOutcome {
    records: Vec<Record>,
    /// Location of a redirect to follow, if the last response asked for one.
    redirect: Option<String>,
    /// The server closed the connection after this many requests of the
    /// hop it was on, of so many wanted, for this reason.
    closed_early: Option<(u32, u32, String)>,
    /// The redirect hop and URL the connection ended on (it follows a
    /// redirect to the same origin itself, as curl).
    hop: u32,
    url: String,
}

impl Prober {
    pub(crate) fn new(kernel: Option<Kernel>, tls: ClientConfig, opts: Options) -> Self {
        Self::with_shared(
            kernel.map(Hub::shared),
            Arc::new(tls),
            opts,
            crate::host::cpustat::CpuSources::find(),
        )
    }

    /// A prober on a kernel (and TLS set-up, and CPU counters' sources)
    /// shared with others that run at the same time: the monitor's, whose
    /// checks find these once.
    pub(crate) fn with_shared(
        kernel: Option<SharedKernel>,
        tls: Arc<ClientConfig>,
        opts: Options,
        cpu: crate::host::cpustat::CpuSources,
    ) -> Self {
        let mode = if kernel.is_some() {
            "ebpf"
        } else {
            "unprivileged"
        };
        Prober {
            kernel,
            tls,
            opts,
            mode,
            cpu,
            dump: Vec::new(),
        }
    }

    /// The --dump-events lines of the requests run since the last call
    /// (each kernel event and the socket's stamps), for stderr.
    pub(crate) fn take_dump(&mut self) -> Vec<String> {
        std::mem::take(&mut self.dump)
    }

    /// "ebpf" or "unprivileged".
    pub(crate) fn mode(&self) -> &'static str {
        self.mode
    }

    fn hub(&self) -> Option<std::sync::MutexGuard<'_, Hub>> {
        self.kernel
            .as_ref()
            .map(|k| k.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// One run over a URL: its requests, and the redirect hops after them with `-L`.
    pub(crate) async fn run(&mut self, url: &str, attempt: u32) -> Vec<Record> {
        let mut out = Vec::new();
        let mut current = url.to_string();
        let mut hop = 0;
        loop {
            // --reuse's requests on as few connections as the server allows.
            let mut want = self.opts.reuse.max(1);
            let mut because: Option<String> = None;
            let redirect = loop {
                let o = self.connection(&current, hop, want).await;
                let mut records = o.records;
                if let Some(first) = records.first_mut() {
                    first.reconnect_reason = because.take();
                }
                out.extend(records.into_iter().map(|mut r| {
                    r.attempt = attempt;
                    r
                }));
                // Redirects to the same origin were followed on the
                // connection itself: go on from where it stopped.
                (hop, current) = (o.hop, o.url);
                match o.closed_early {
                    Some((done, wanted, why)) if done < wanted => {
                        want = wanted - done;
                        because = Some(why);
                    }
                    _ => break o.redirect,
                }
            };
            match redirect {
                Some(next) if self.opts.follow => {
                    if hop >= self.opts.max_redirs {
                        let mut r = Record::new(&next, self.method_for(&next).as_str(), self.mode);
                        r.started_at = crate::host::clock::wall_of(None);
                        r.attempt = attempt;
                        r.redirect_hop = hop + 1;
                        r.error = Some(ErrorInfo::new(
                            ErrorKind::Http,
                            format!(
                                "more than {} redirects (raise --max-redirs)",
                                self.opts.max_redirs
                            ),
                        ));
                        out.push(r);
                        break;
                    }
                    current = next;
                    hop += 1;
                }
                _ => break,
            }
        }
        out
    }

    fn method_for(&self, _url: &str) -> Method {
        self.opts.method.clone().unwrap_or_else(|| {
            if self.opts.body.is_some() {
                Method::POST
            } else {
                Method::GET
            }
        })
    }

    fn fail(&self, url: &str, hop: u32, e: ErrorInfo) -> ConnOutcome {
        let mut r = Record::new(url, self.method_for(url).as_str(), self.mode);
        r.started_at = crate::host::clock::wall_of(None);
        r.redirect_hop = hop;
        // The proxy it was going through, when one was chosen (its name
        // may be what failed).
        r.proxy = parse_target(url)
            .ok()
            .and_then(|t| {
                let p = self.opts.proxy.for_url(t.url.scheme(), &t.host).ok()??;
                Some((p, t.tls))
            })
            .map(|(p, tunnel)| crate::model::record::ProxyUsed {
                url: p.display(),
                from: p.from,
                tunnel,
                connect_status: None,
            });
        r.error = Some(e);
        if let Some(k) = self.hub() {
            r.drops = k.drops();
        }
        ConnOutcome {
            records: vec![r],
            redirect: None,
            closed_early: None,
            hop,
            url: url.to_string(),
        }
    }

    async fn resolve(
        &self,
        t: &Target,
        deadline: Option<Instant>,
    ) -> Result<SocketAddr, ErrorInfo> {
        self.resolve_host(&t.host, t.port, deadline).await
    }

    /// A name (or address) and port to a socket address: --resolve first,
    /// then an address as given, then the system's resolver.
    async fn resolve_host(
        &self,
        host: &str,
        port: u16,
        deadline: Option<Instant>,
    ) -> Result<SocketAddr, ErrorInfo> {
        let fam_ok = |a: &IpAddr| match self.opts.family {
            Family::Any => true,
            Family::V4 => a.is_ipv4(),
            Family::V6 => a.is_ipv6(),
        };
        let host = host.to_ascii_lowercase();
        if let Some(r) = self
            .opts
            .resolve
            .iter()
            .find(|r| r.host == host && r.port == port && fam_ok(&r.addr))
        {
            return Ok(SocketAddr::new(r.addr, port));
        }
        if let Ok(ip) = host.parse::<IpAddr>() {
            return if fam_ok(&ip) {
                Ok(SocketAddr::new(ip, port))
            } else {
                Err(ErrorInfo::new(
                    ErrorKind::Dns,
                    format!("{ip} does not match the address family asked for (-4/-6)"),
                ))
            };
        }
        let lookup = tokio::net::lookup_host((host.clone(), port));
        let addrs = with_deadline(deadline, "dns", lookup)
            .await?
            .map_err(|e| ErrorInfo::new(ErrorKind::Dns, format!("cannot resolve {host}: {e}")))?;
        let all: Vec<SocketAddr> = addrs.collect();
        all.iter()
            .copied()
            .find(|a| fam_ok(&a.ip()))
            .ok_or_else(|| {
                ErrorInfo::new(
                    ErrorKind::Dns,
                    format!(
                        "{host} has no {} address (found {})",
                        match self.opts.family {
                            Family::V4 => "IPv4",
                            Family::V6 => "IPv6",
                            Family::Any => "usable",
                        },
                        all.len()
                    ),
                )
            })
    }

    /// One connection: DNS, connect, TLS, then `--reuse` requests on it.
    async fn connection(&mut self, url: &str, hop: u32, want: u32) -> ConnOutcome {
        let (mut a, sock) = match self.prepare(url, hop).await {
            Ok(x) => x,
            Err(e) => return self.fail(url, hop, e),
        };
        a.want = want.max(1);
        // Without eBPF the socket's own timestamps are the wire times (set
        // once connected: byte-keyed stamps need a connected TCP socket).
        let stamped = self.kernel.is_none();
        let result = self.exchange(&mut a, sock, stamped).await;
        // By the routing table: a point-to-point or `scope link` route is
        // on-link although no subnet of ours holds the address. Asked once
        // the exchange is over, so that it is in no timed phase.
        a.base.remote_on_link = crate::host::netif::local_nets()
            .ok()
            .map(|nets| crate::host::netif::reached_on_link(a.addr.ip(), &nets));

        // The socket is closed now (FIN or RST sent): collect what the kernel saw.
        let stamps = crate::active::io::lock(&a.log).stamps.take();
        if self.opts.dump_events
            && let Some(s) = &stamps
        {
            self.dump.push(format!(
                "stamps: writes {:?} reads {:?} tx {:?} at_connect {:?} last {:?}",
                s.writes, s.reads, s.tx, s.at_connect, s.last
            ));
        }
        let flow = match &stamps {
            Some(s) => Some(s.flow(a.key.unwrap_or_default())),
            None => self.collect(a.cookie, a.key.as_ref()),
        };
        let failed = result.err();
        let redirect = if failed.is_some() {
            None
        } else {
            a.redirect.take()
        };
        let mut records = self.records(&a, failed, flow.as_ref(), stamps.as_ref());
        if self.opts.path_probe
            && let Some(first) = records.first()
            && first.wire.handshake_rtt_ms.is_some()
        {
            let ttl = path_probe(a.addr, &first.wire, a.deadline).await;
            for r in &mut records {
                r.path_probe_ttl = ttl;
            }
        }
        judge(&mut records);
        ConnOutcome {
            records,
            redirect,
            closed_early: a.closed_early.take(),
            hop: a.hop,
            url: a.url.clone(),
        }
    }

    /// Everything before the connect: the URL parsed, the name resolved, a
    /// socket made, timestamped and registered with the kernel side.
    async fn prepare(&mut self, url: &str, hop: u32) -> Result<(Attempt, TcpSocket), ErrorInfo> {
        let t = parse_target(url)?;
        let deadline = self.opts.max_time.map(|d| Instant::now() + d);
        let method = self.method_for(url);
        let mut conn = ConnMarks::default();
        let mut base = Record::new(url, method.as_str(), self.mode);
        // Until finish() has the timeline's first event: a request that
        // fails before any still says when.
        base.started_at = crate::host::clock::wall_of(None);
        base.redirect_hop = hop;

        // Through a proxy only the proxy's name is looked up (as curl
        // does): the proxy resolves the origin's.
        let proxy = self.opts.proxy.for_url(t.url.scheme(), &t.host)?;
        // The CPU counters before the request's first step (their reading
        // is no part of any timed phase).
        let cpu_before = crate::host::cpustat::CpuSnapshot::take(&self.cpu);
        conn.dns_start = Some(mono_ns());
        let addr = match &proxy {
            None => self.resolve(&t, deadline).await?,
            Some(p) => self
                .resolve_host(&p.host, p.port, deadline)
                .await
                .map_err(|e| match e.kind {
                    ErrorKind::Dns => ErrorInfo::new(
                        ErrorKind::ProxyDns,
                        format!("proxy {} ({}): {}", p.display(), p.from, e.message),
                    ),
                    _ => e,
                })?,
        };
        conn.dns_done = Some(mono_ns());
        base.proxy = proxy.as_ref().map(|p| crate::model::record::ProxyUsed {
            url: p.display(),
            from: p.from,
            tunnel: t.tls,
            connect_status: None,
        });
        base.remote_addr = Some(addr.to_string());
        base.ip_version = Some(if addr.is_ipv4() { 4 } else { 6 });

        let sock = if addr.is_ipv4() {
            TcpSocket::new_v4()
        } else {
            TcpSocket::new_v6()
        }
        .map_err(|e| ErrorInfo::new(ErrorKind::Io, format!("socket: {e}")))?;
        // Asking for receive timestamps turns the stack's software RX
        // timestamping on (host-wide, while the socket lives): incoming
        // packets then carry the time the stack received them, which the
        // classifiers report next to their own (see events::best_ts).
        enable_rx_timestamps(sock.as_raw_fd());
        let cookie = socket_cookie(sock.as_raw_fd());
        base.socket_cookie = cookie;
        let registered = match (self.hub(), cookie) {
            (Some(mut k), Some(c)) => k.register(c).err(),
            _ => None,
        };
        if let Some(e) = registered {
            return Err(ErrorInfo::new(ErrorKind::Kernel, e.to_string()));
        }
        let a = Attempt {
            t,
            method,
            addr,
            deadline,
            conn,
            log: Arc::new(Mutex::new(IoLog::default())),
            base,
            done: Vec::new(),
            key: None,
            redirect: None,
            cookie,
            want: 1,
            hop,
            url: url.to_string(),
            closed_early: None,
            proxy,
            h2: false,
            cpu_before: Some(cpu_before),
        };
        Ok((a, sock))
    }

    /// The records of one connection: one per completed request, then the
    /// one that failed (or the connection that never got to a request).
    fn records(
        &self,
        a: &Attempt,
        failed: Option<Failed>,
        flow: Option<&Flow>,
        stamps: Option<&crate::active::stamps::Stamps>,
    ) -> Vec<Record> {
        let n_done = a.done.len();
        let mut records = Vec::new();
        for (i, d) in a.done.iter().enumerate() {
            let mut r = a.base.clone();
            r.url.clone_from(&d.url);
            r.redirect_hop = d.hop;
            r.method = d.method.to_string();
            r.request_index = i as u32;
            r.connection_reused = i > 0;
            r.http_status = Some(d.status);
            r.http_version = Some(d.response.version);
            r.via = d.via.clone();
            r.server_timing_ms = d.server_timing;
            r.response = Some(Box::new(d.response.clone()));
            r.client = Some(d.stall.clone());
            r.request_bytes = Some(d.request_bytes);
            r.response_bytes = Some(d.response_bytes);
            self.finish(&mut r, flow, (i == 0).then_some(&a.conn), a.t.tls, &d.marks);
            if let Some(s) = stamps {
                unprivileged_wire(&mut r, s, (i == 0).then_some(&a.conn), n_done);
            }
            records.push(r);
        }
        if let Some(Failed { error, marks }) = failed {
            // The request that failed (or the connection that never got to one).
            let mut r = a.base.clone();
            r.url.clone_from(&a.url);
            r.redirect_hop = a.hop;
            r.method = a.method.to_string();
            r.request_index = n_done as u32;
            r.connection_reused = n_done > 0;
            let m = marks.unwrap_or_default();
            self.finish(&mut r, flow, (n_done == 0).then_some(&a.conn), a.t.tls, &m);
            if let Some(s) = stamps {
                unprivileged_wire(&mut r, s, (n_done == 0).then_some(&a.conn), n_done + 1);
            }
            r.error = Some(error);
            records.push(r);
        }
        records
    }

    /// Connects, secures (https) and runs the requests of one connection;
    /// then lets hyper close it.
    async fn exchange(
        &mut self,
        a: &mut Attempt,
        sock: TcpSocket,
        stamped: bool,
    ) -> Result<(), Failed> {
        let cpu_before = match a.cpu_before.take() {
            Some(c) => c,
            None => crate::host::cpustat::CpuSnapshot::take(&self.cpu),
        };
        let stream = connect(a, sock).await?;
        let stamped = stamped && crate::active::stamps::enable(stream.as_raw_fd()).is_ok();
        if stamped {
            let mut st = crate::active::stamps::Stamps::new();
            st.at_connect = crate::active::stamps::tcp_info(stream.as_raw_fd());
            crate::active::io::lock(&a.log).stamps = Some(st);
        }
        let mut raw = RawStream::new(stream, a.log.clone(), a.t.tls, stamped);
        if a.t.tls && a.proxy.is_some() {
            self.tunnel(a, &mut raw).await?;
        }
        let io: Box<dyn AsyncStream> = if a.t.tls {
            self.tls_handshake(a, raw).await?
        } else {
            Box::new(raw)
        };
        // HTTP/2 when the server chose it in ALPN, or without asking
        // (prior knowledge); never to a plain-HTTP proxy (absolute form).
        let h2 = match a.base.tls_info.as_ref() {
            Some(t) => t.alpn.as_deref() == Some("h2"),
            None => self.opts.http == HttpVersion::PriorKnowledge && a.proxy.is_none(),
        };
        a.h2 = h2;
        if h2 {
            crate::active::io::lock(&a.log).h2 = Some(crate::active::io::H2Io::new());
        }
        let app = AppStream::new(io, a.log.clone());
        let (mut sender, driver, ping) = if h2 {
            let (sender, mut connection) = h2::client::Builder::new()
                .enable_push(false)
                .max_header_list_size(MAX_HEAD_BYTES as u32)
                .handshake::<_, Bytes>(app)
                .await
                .map_err(|e| {
                    Failed::from(ErrorInfo::new(
                        ErrorKind::Http,
                        format!("HTTP/2 setup: {e}"),
                    ))
                })?;
            let ping = connection.ping_pong();
            let driver = tokio::spawn(async move {
                let _ = connection.await;
            });
            (Sender::H2(sender), driver, ping)
        } else {
            let (sender, connection) = hyper::client::conn::http1::Builder::new()
                // Bounded buffering; a head over MAX_HEAD_BYTES is refused below.
                .max_buf_size(4 * MAX_HEAD_BYTES)
                .handshake::<_, Full<Bytes>>(TokioIo::new(app))
                .await
                .map_err(|e| {
                    Failed::from(ErrorInfo::new(
                        ErrorKind::Http,
                        format!("HTTP/1.1 setup: {e}"),
                    ))
                })?;
            let driver = tokio::spawn(async move {
                let _ = connection.await;
            });
            (Sender::H1(sender), driver, None)
        };
        let result = self.requests(a, &mut sender, cpu_before).await;
        if let Some(p) = ping
            && result.is_ok()
        {
            h2_ping(a, p).await;
        }
        drop(sender);
        // Let the connection close so the FIN is on the record.
        let _ = tokio::time::timeout(Duration::from_millis(200), driver).await;
        result
    }

    /// Through a declared proxy: CONNECT to the origin and the proxy's
    /// answer, read as plain bytes before TLS starts on the tunnel.
    async fn tunnel(&self, a: &mut Attempt, raw: &mut RawStream) -> Result<(), Failed> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let Some(p) = a.proxy.clone() else {
            return Ok(());
        };
        let authority = match a.t.url.host() {
            Some(url::Host::Ipv6(h)) => format!("[{h}]:{}", a.t.port),
            _ => format!("{}:{}", a.t.host, a.t.port),
        };
        let mut req = format!(
            "CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\nUser-Agent: {}\r\n",
            self.user_agent()
        );
        if let Some(auth) = p.authorization() {
            req.push_str(&format!("Proxy-Authorization: {auth}\r\n"));
        }
        req.push_str("Proxy-Connection: Keep-Alive\r\n\r\n");
        let io_err = |e: std::io::Error| {
            Failed::from(ErrorInfo::new(
                ErrorKind::Io,
                format!("CONNECT through proxy {}: {e}", p.display()),
            ))
        };
        raw.pause_records();
        a.conn.proxy_connect_start = Some(mono_ns());
        let exchange = async {
            raw.write_all(req.as_bytes()).await?;
            raw.flush().await?;
            let mut head = Vec::with_capacity(256);
            let mut buf = [0u8; 1024];
            loop {
                let n = raw.read(&mut buf).await?;
                if n == 0 {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "the proxy closed the connection before it answered",
                    ));
                }
                head.extend_from_slice(&buf[..n]);
                if head.windows(4).any(|w| w == b"\r\n\r\n") || head.len() > MAX_HEAD_BYTES {
                    return Ok(head);
                }
            }
        };
        let head = with_deadline(a.deadline, "the proxy's CONNECT", exchange)
            .await?
            .map_err(io_err)?;
        a.conn.proxy_connect_done = Some(mono_ns());
        let answer = crate::model::proxy::connect_answer(&head).map_err(|why| {
            Failed::from(ErrorInfo::new(
                ErrorKind::Http,
                format!("proxy {}: {why}", p.display()),
            ))
        })?;
        if let Some(used) = a.base.proxy.as_mut() {
            used.connect_status = Some(answer.status);
        }
        {
            let log = crate::active::io::lock(&a.log);
            a.conn.tls_out_at = log.raw_out;
            a.conn.tls_in_at = log.raw_in;
        }
        if let Some(e) = answer.error(&p) {
            return Err(Failed::from(e));
        }
        if answer.extra > 0 {
            return Err(Failed::from(ErrorInfo::new(
                ErrorKind::Http,
                format!(
                    "proxy {} sent {} bytes after its answer to CONNECT, before TLS began",
                    p.display(),
                    answer.extra
                ),
            )));
        }
        raw.resume_records();
        Ok(())
    }

    /// The User-Agent synack sends unless -A or -H sets one.
    fn user_agent(&self) -> String {
        self.header_text(&header::USER_AGENT)
            .unwrap_or_else(|| USER_AGENT.to_string())
    }

    /// The TLS handshake, timed, and what it gave (version, certificate).
    async fn tls_handshake(
        &self,
        a: &mut Attempt,
        raw: RawStream,
    ) -> Result<Box<dyn AsyncStream>, Failed> {
        let t = &a.t;
        let name = ServerName::try_from(t.host.clone()).map_err(|e| {
            ErrorInfo::new(
                ErrorKind::InvalidUrl,
                format!("bad TLS server name {}: {e}", t.host),
            )
        })?;
        a.conn.tls_start = Some(mono_ns());
        let connector = tokio_rustls::TlsConnector::from(self.tls.clone());
        let s = with_deadline(a.deadline, "tls", connector.connect(name, raw))
            .await?
            .map_err(|e| {
                ErrorInfo::new(
                    ErrorKind::Tls,
                    format!("TLS handshake with {}: {e}", t.host),
                )
            })?;
        a.conn.tls_done = Some(mono_ns());
        a.conn.tls_end_out = Some(crate::active::io::lock(&a.log).raw_out);
        a.base.tls_info = Some(tls_info(s.get_ref().1));
        a.conn.tls13 = s.get_ref().1.protocol_version() == Some(rustls::ProtocolVersion::TLSv1_3);
        Ok(Box::new(s))
    }

    /// The --reuse requests on the connection, one after the other, until
    /// one fails; each completed one goes to `a.done`.
    async fn requests(
        &mut self,
        a: &mut Attempt,
        sender: &mut Sender,
        mut cpu_before: crate::host::cpustat::CpuSnapshot,
    ) -> Result<(), Failed> {
        loop {
            self.hop_requests(a, sender, &mut cpu_before).await?;
            if a.closed_early.is_some() || !self.same_origin_redirect(a, sender).await {
                return Ok(());
            }
        }
    }

    /// With -L, a redirect to the same origin is followed on this
    /// connection when it is still open (as curl reuses it); true when the
    /// next hop's requests go here.
    async fn same_origin_redirect(&self, a: &mut Attempt, sender: &mut Sender) -> bool {
        let Some(next) = a.redirect.clone() else {
            return false;
        };
        if !self.opts.follow || a.hop >= self.opts.max_redirs {
            return false;
        }
        let Ok(t) = parse_target(&next) else {
            return false;
        };
        if !same_origin(&a.t.url, &t.url) {
            return false;
        }
        if !matches!(
            with_deadline(a.deadline, "response", sender.ready()).await,
            Ok(Ok(()))
        ) {
            return false;
        }
        a.redirect = None;
        a.t = t;
        a.method = self.method_for(&next);
        a.url = next;
        a.hop += 1;
        a.want = self.opts.reuse.max(1);
        true
    }

    /// One hop's --reuse requests on the connection, one after the other,
    /// until one fails; each completed one goes to `a.done`.
    async fn hop_requests(
        &mut self,
        a: &mut Attempt,
        sender: &mut Sender,
        cpu_before: &mut crate::host::cpustat::CpuSnapshot,
    ) -> Result<(), Failed> {
        let n = a.want;
        for i in 0..n {
            // A request after the connection's first.
            let later = !a.done.is_empty();
            // A server that closes after a response (Connection: close,
            // HTTP/1.0, an idle timeout) leaves the rest of --reuse to a new
            // connection, as curl opens one.
            if later {
                match with_deadline(a.deadline, "response", sender.ready()).await {
                    Ok(Ok(())) => {}
                    Ok(Err(_)) => {
                        a.closed_early =
                            Some((i, n, close_reason(a.done.last(), a.done.len() as u32)));
                        return Ok(());
                    }
                    Err(e) => return Err(Failed::from(e)),
                }
            }
            let req = self.build_request(&a.t, &a.method, a.proxy.as_ref(), a.h2)?;
            crate::active::io::lock(&a.log).arm();
            if later {
                *cpu_before = crate::host::cpustat::CpuSnapshot::take(&self.cpu);
            }
            let mut m = RequestMarks {
                request_start: Some(mono_ns()),
                ..Default::default()
            };
            // Bodies of redirects that -L follows are not written, as in curl.
            let sink = Sink {
                to: self.opts.sink.as_ref(),
                head: self.opts.include_head,
                skip_body_of_redirect: self.opts.follow,
            };
            let r = with_deadline(a.deadline, "response", sender.exchange(req, sink)).await;
            m.done = Some(mono_ns());
            let stall =
                stall_of(&cpu_before.until(&crate::host::cpustat::CpuSnapshot::take(&self.cpu)));
            let io = crate::active::io::lock(&a.log).disarm();
            m.first_write = io.first_write_ns;
            m.request_written = io.last_write_ns;
            m.first_byte_read = io.first_read_ns;
            m.out_start = io.out_start;
            m.out_end = io.out_start.map(|_| io.out_end);
            m.in_start = io.in_start;
            let head = match r {
                Ok(Ok(head)) if head.bytes > MAX_HEAD_BYTES => {
                    return Err(Failed::with(
                        ErrorInfo::new(
                            ErrorKind::Http,
                            format!(
                                "the response head is {} bytes, over the {} KiB synack accepts",
                                head.bytes,
                                MAX_HEAD_BYTES / 1024
                            ),
                        ),
                        m,
                    ));
                }
                Ok(Ok(head)) => head,
                // The close raced the request: nothing of a response came,
                // so it goes again on a new connection (curl retries a
                // request that a reused connection dropped, too).
                Ok(Err(e)) if later && m.first_byte_read.is_none() && e.closed => {
                    a.closed_early = Some((
                        i,
                        n,
                        format!(
                            "the server closed the connection as request {} was sent",
                            a.done.len() + 1
                        ),
                    ));
                    return Ok(());
                }
                Ok(Err(e)) => return Err(Failed::with(e.info, m)),
                Err(e) => return Err(Failed::with(e, m)),
            };
            if i + 1 == n && head.status.is_redirection() {
                a.redirect = head.location.map(|l| join_location(&a.t.url, &l));
            }
            a.done.push(Done {
                url: a.url.clone(),
                hop: a.hop,
                method: a.method.clone(),
                marks: m,
                stall,
                status: head.status.as_u16(),
                via: head.via,
                server_timing: head.server_timing,
                response: head.seen,
                request_bytes: io.app_out,
                response_bytes: io.app_in,
            });
        }
        Ok(())
    }

    fn build_request(
        &self,
        t: &Target,
        method: &Method,
        proxy: Option<&crate::model::proxy::Proxy>,
        h2: bool,
    ) -> Result<Request<Bytes>, ErrorInfo> {
        let mut path = match t.url.query() {
            Some(q) => format!("{}?{q}", t.url.path()),
            None => t.url.path().to_string(),
        };
        // A plain request to a proxy names the whole URL (absolute form);
        // through a tunnel the origin gets the path as usual.
        let forward = proxy.filter(|_| !t.tls);
        // HTTP/2 carries the scheme and authority as pseudo-headers, taken
        // from an absolute URI (and no Host header, as curl).
        if forward.is_some() || h2 {
            let mut u = t.url.clone();
            u.set_fragment(None);
            // Credentials in the URL never go into a request line or
            // :authority (curl sends them as Authorization, as -H can).
            let _ = u.set_username("");
            let _ = u.set_password(None);
            path = u.to_string();
            // HTTP/2: a Host given with -H is the :authority (as curl).
            if h2 && let Some(host) = self.header_text(&header::HOST) {
                let rest = &path[u.scheme().len() + 3..];
                let tail = rest.find('/').map_or("/", |i| &rest[i..]);
                path = format!("{}://{host}{tail}", u.scheme());
            }
        }
        let uri: Uri = path.parse().map_err(|e| {
            ErrorInfo::new(
                ErrorKind::InvalidUrl,
                format!("bad request path {path:?}: {e}"),
            )
        })?;
        let host = match (t.url.port(), t.url.host()) {
            (Some(p), Some(url::Host::Ipv6(a))) => format!("[{a}]:{p}"),
            (None, Some(url::Host::Ipv6(a))) => format!("[{a}]"),
            (Some(p), _) => format!("{}:{p}", t.host),
            (None, _) => t.host.clone(),
        };
        let mut b = Request::builder().method(method.clone()).uri(uri);
        let has = |n: &HeaderName| self.opts.headers.iter().any(|(h, _)| h == n);
        if !has(&header::HOST) && !h2 {
            b = b.header(header::HOST, host);
        }
        if !has(&header::USER_AGENT) {
            b = b.header(header::USER_AGENT, USER_AGENT);
        }
        if !has(&header::ACCEPT) {
            b = b.header(header::ACCEPT, "*/*");
        }
        if let Some(p) = forward {
            if let Some(auth) = p.authorization() {
                b = b.header(header::PROXY_AUTHORIZATION, auth);
            }
            b = b.header("proxy-connection", "Keep-Alive");
        }
        for (k, v) in &self.opts.headers {
            // HTTP/2 has no connection-specific headers (RFC 9113 8.2.2):
            // curl leaves them out, and h2 refuses a request that has one.
            if h2 && (h2_drops(k, v) || k == header::HOST) {
                continue;
            }
            b = b.header(k, v);
        }
        let body = self.opts.body.clone().unwrap_or_default();
        b.body(body).map_err(|e| {
            ErrorInfo::new(ErrorKind::InvalidUrl, format!("cannot build request: {e}"))
        })
    }

    /// The value of a -H header, as text.
    fn header_text(&self, name: &HeaderName) -> Option<String> {
        self.opts
            .headers
            .iter()
            .find(|(h, _)| h == name)
            .and_then(|(_, v)| v.to_str().ok())
            .map(str::to_string)
    }

    /// Drains the kernel's events and builds the flow of this connection.
    fn collect(&mut self, cookie: Option<u64>, key: Option<&FlowKey>) -> Option<Flow> {
        let cookie = cookie?;
        // A clone of the shared handle, so that self.dump can grow while
        // the hub is locked.
        let shared = self.kernel.clone()?;
        let mut k = shared.lock().unwrap_or_else(|e| e.into_inner());
        // Whether the kernel still holds the connection, asked before the
        // drain: the classifier removes a flow itself only after sending
        // its closing events (both FINs, or a RST), so a flow gone by now
        // has them in the drain below and reads as closed. Asked after the
        // drain, a close that fell between the two looked like an
        // eviction (tens a minute at 1,000 checks a second).
        let present = key.map(|key| k.has_flow(key));
        let mut flow: Option<Flow> = None;
        for ev in k.take(cookie) {
            if self.opts.dump_events {
                self.dump.push(format!(
                    "event t={} kind={} dir={} seq={} ack={} len={} flags={:#x} evf={} ttl={} skb_tstamp={} type={}",
                    ev.ts_ns,
                    ev.kind,
                    ev.dir,
                    ev.seq,
                    ev.ack,
                    ev.payload_len,
                    ev.tcp_flags,
                    ev.ev_flags,
                    ev.ttl,
                    ev.skb_tstamp,
                    ev.skb_tstamp_type
                ));
            }
            flow.get_or_insert_with(|| Flow::new(ev.key, ev.cookie))
                .push(&ev);
        }
        if present == Some(false) {
            // The kernel drops a connection's state itself once it closed.
            let live = flow.as_ref().is_some_and(|f| {
                f.events.iter().any(|e| e.tcp_flags & TCP_SYN != 0) && !f.closed()
            });
            if live {
                k.note_evicted();
            }
        }
        k.forget(cookie, key);
        flow
    }

    fn finish(
        &self,
        r: &mut Record,
        flow: Option<&Flow>,
        conn: Option<&ConnMarks>,
        tls: bool,
        m: &RequestMarks,
    ) {
        r.user = timeline::user_times(conn, m);
        let (w, tl) = timeline::assemble(flow, conn, tls, m);
        r.wire = w;
        r.timeline = tl;
        r.started_at =
            crate::host::clock::wall_of(r.timeline.first().map(|e| e.t_ns)).or(r.started_at.take());
        if let Some(k) = self.hub() {
            r.drops = k.drops();
        }
    }
}

/// One connection's context while it runs: what its requests share.
struct Attempt {
    t: Target,
    method: Method,
    addr: SocketAddr,
    deadline: Option<Instant>,
    conn: ConnMarks,
    log: SharedLog,
    /// The fields every record of this connection shares.
    base: Record,
    /// The requests that completed, in order.
    done: Vec<Done>,
    key: Option<FlowKey>,
    /// Location of a redirect the last response asked for.
    redirect: Option<String>,
    cookie: Option<u64>,
    /// Requests to send on this connection (what is left of --reuse).
    want: u32,
    /// The redirect hop being requested, and its URL (a redirect to the
    /// same origin goes on on this connection).
    hop: u32,
    url: String,
    /// Set when the server closed the connection before `want` were sent:
    /// how many of the hop's were done, of how many, and why
    /// (`close_reason`).
    closed_early: Option<(u32, u32, String)>,
    /// The declared proxy this connection goes to (`addr` is its address).
    proxy: Option<crate::model::proxy::Proxy>,
    /// The connection speaks HTTP/2.
    h2: bool,
    /// The CPU counters taken before the connection's DNS (the first
    /// request's stall is counted from there).
    cpu_before: Option<crate::host::cpustat::CpuSnapshot>,
}

/// Connects, timed; the connection's addresses go to the record and key.
async fn connect(a: &mut Attempt, sock: TcpSocket) -> Result<tokio::net::TcpStream, Failed> {
    a.conn.connect_call = Some(mono_ns());
    let phase = if a.proxy.is_some() {
        "connect to the proxy"
    } else {
        "connect"
    };
    let stream = with_deadline(a.deadline, phase, sock.connect(a.addr))
        .await?
        .map_err(|e| {
            let e = connect_error(a.addr, e);
            match &a.proxy {
                None => e,
                Some(p) => ErrorInfo::new(
                    if e.kind == ErrorKind::ConnectRefused {
                        ErrorKind::ProxyRefused
                    } else {
                        ErrorKind::ProxyConnect
                    },
                    format!("proxy {} ({}): {}", p.display(), p.from, e.message),
                ),
            }
        })?;
    a.conn.connect_done = Some(mono_ns());
    // Requests go out in one segment as soon as they are written, as with curl.
    let _ = stream.set_nodelay(true);
    if let Ok(local) = stream.local_addr() {
        a.base.local_addr = Some(local.to_string());
        a.key = Some(flow_key(local, a.addr));
    }
    Ok(stream)
}

/// Why the server closed the connection after `done` requests, from the
/// last response's head.
fn close_reason(last: Option<&Done>, done: u32) -> String {
    let h = |name: &str| {
        last.and_then(|d| {
            d.response
                .headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.to_ascii_lowercase())
        })
    };
    let conn = h("connection").unwrap_or_default();
    if conn.contains("close") {
        format!("the server answered request {done} with Connection: close")
    } else if last.is_some_and(|d| d.response.version == "1.0") && !conn.contains("keep-alive") {
        format!("the server answered request {done} in HTTP/1.0, without keep-alive")
    } else {
        format!("the server closed the connection after request {done}")
    }
}

/// What synack keeps of a response's head.
struct Head {
    status: http::StatusCode,
    location: Option<String>,
    via: Option<String>,
    /// Server-Timing's first `dur`, ms.
    server_timing: Option<f64>,
    /// The head as sent: status line, then "name: value\r\n" each.
    bytes: usize,
    /// Head and body size, for curl's output options.
    seen: crate::model::record::ResponseSeen,
}

/// Where `read_response` writes what it reads.
#[derive(Clone, Copy)]
struct Sink<'a> {
    to: Option<&'a BodySink>,
    /// curl's -i.
    head: bool,
    /// -L: a redirect's body is not written (its head is, with -i).
    skip_body_of_redirect: bool,
}

/// The request sender of one connection: HTTP/1.1 (hyper) or HTTP/2 (h2).
pub(crate) enum Sender {
    H1(hyper::client::conn::http1::SendRequest<Full<Bytes>>),
    H2(h2::client::SendRequest<Bytes>),
}

/// Why an exchange failed, and whether nothing came back because the
/// connection closed (a close that raced the request).
struct SendError {
    info: ErrorInfo,
    closed: bool,
}

impl From<hyper::Error> for SendError {
    fn from(e: hyper::Error) -> Self {
        SendError {
            closed: e.is_canceled() || e.is_closed() || e.is_incomplete_message(),
            info: http_error(&e),
        }
    }
}

impl From<h2::Error> for SendError {
    fn from(e: h2::Error) -> Self {
        let msg = crate::model::record::error_chain(&e);
        let closed = e.is_go_away() || e.is_io() || e.reason() == Some(h2::Reason::REFUSED_STREAM);
        // "HTTP/2 stream" (a RST_STREAM) and "HTTP/2" (the connection) are
        // curl's exit codes 92 and 16 (output::writeout::exit_code).
        let what = if e.is_reset() && !e.is_go_away() {
            "HTTP/2 stream"
        } else {
            "HTTP/2"
        };
        SendError {
            closed,
            info: ErrorInfo::new(
                if e.is_io() {
                    ErrorKind::Io
                } else {
                    ErrorKind::Http
                },
                format!("{what}: {msg}"),
            ),
        }
    }
}

impl Sender {
    /// Waits until the connection can take another request; an error means
    /// the server closed it.
    async fn ready(&mut self) -> Result<(), ()> {
        match self {
            Sender::H1(s) => s.ready().await.map_err(|_| ()),
            Sender::H2(s) => {
                *s = s.clone().ready().await.map_err(|_| ())?;
                Ok(())
            }
        }
    }

    /// Sends the request and reads the whole response: the body goes to
    /// the sink as it arrives (or is dropped); its last byte is the
    /// request's end.
    async fn exchange(&mut self, req: Request<Bytes>, sink: Sink<'_>) -> Result<Head, SendError> {
        match self {
            Sender::H1(s) => {
                let resp = s.send_request(req.map(Full::new)).await?;
                // The reason phrase as the server sent it (hyper keeps a
                // non-standard one), else the standard one.
                let reason = resp
                    .extensions()
                    .get::<hyper::ext::ReasonPhrase>()
                    .map(|r| String::from_utf8_lossy(r.as_bytes()).into_owned())
                    .or_else(|| resp.status().canonical_reason().map(str::to_string))
                    .unwrap_or_default();
                let (head, mut seen) =
                    head_of(resp.status(), resp.version(), reason, resp.headers());
                let write_body = sink.writes_body_of(&head);
                sink.head(&seen, &head);
                let mut body = resp.into_body();
                while let Some(frame) = body.frame().await {
                    if let Some(data) = frame?.data_ref() {
                        sink.body(&mut seen, data, write_body);
                    }
                }
                Ok(Head { seen, ..head })
            }
            Sender::H2(s) => {
                let (parts, body) = req.into_parts();
                let end = body.is_empty();
                let (resp, mut stream) = s.send_request(Request::from_parts(parts, ()), end)?;
                if !end {
                    stream.send_data(body, true)?;
                }
                let resp = resp.await?;
                // HTTP/2 has no reason phrase.
                let (head, mut seen) =
                    head_of(resp.status(), resp.version(), String::new(), resp.headers());
                let write_body = sink.writes_body_of(&head);
                sink.head(&seen, &head);
                let mut body = resp.into_body();
                while let Some(chunk) = body.data().await {
                    let chunk = chunk?;
                    // Give the window back, or a large body stalls.
                    let _ = body.flow_control().release_capacity(chunk.len());
                    sink.body(&mut seen, &chunk, write_body);
                }
                Ok(Head { seen, ..head })
            }
        }
    }
}

impl Sink<'_> {
    /// -L: a redirect's body is not written (its head is, with -i).
    fn writes_body_of(&self, head: &Head) -> bool {
        !(self.skip_body_of_redirect && head.status.is_redirection() && head.location.is_some())
    }

    /// With -i the head goes out before the body.
    fn head(&self, seen: &crate::model::record::ResponseSeen, head: &Head) {
        if let Some(to) = self.to
            && self.head
        {
            to.write(seen.head_text(head.status.as_u16()).as_bytes());
        }
    }

    fn body(&self, seen: &mut crate::model::record::ResponseSeen, data: &[u8], write: bool) {
        seen.body_bytes += data.len() as u64;
        if let Some(to) = self.to
            && write
        {
            to.write(data);
        }
    }
}

/// What synack keeps of a response's head, and its size as curl counts it
/// ("HTTP/1.1 200 OK\r\n" or "HTTP/2 200 \r\n", "name: value\r\n" each,
/// "\r\n").
fn head_of(
    status: http::StatusCode,
    version: http::Version,
    reason: String,
    map: &http::HeaderMap,
) -> (Head, crate::model::record::ResponseSeen) {
    let text = |name: &str| {
        map.get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let version = match version {
        http::Version::HTTP_10 => "1.0",
        http::Version::HTTP_2 => "2",
        http::Version::HTTP_3 => "3",
        _ => "1.1",
    };
    let headers: Vec<(String, String)> = map
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let seen = crate::model::record::ResponseSeen {
        version,
        reason,
        headers,
        header_bytes: 0,
        body_bytes: 0,
    };
    let header_bytes = seen.head_text(status.as_u16()).len();
    let seen = crate::model::record::ResponseSeen {
        header_bytes: header_bytes as u64,
        ..seen
    };
    let head = Head {
        status,
        via: text(header::VIA.as_str()),
        server_timing: text("server-timing").as_deref().and_then(server_timing_dur),
        bytes: header_bytes,
        location: text(header::LOCATION.as_str()),
        seen: Default::default(),
    };
    (head, seen)
}

/// After the requests of an HTTP/2 connection, one PING and its ACK: a
/// round trip to the HTTP/2 endpoint with nothing else in it (the origin
/// behind a TCP relay, the proxy itself when it terminates TLS). Sent
/// last, so it never delays a request; bounded in time.
async fn h2_ping(a: &mut Attempt, mut p: h2::PingPong) {
    if let Some(h) = crate::active::io::lock(&a.log).h2.as_mut() {
        h.ping_armed = true;
    }
    let limit = Instant::now() + Duration::from_secs(2);
    let until = a.deadline.map_or(limit, |d| d.min(limit));
    let answered = matches!(
        tokio::time::timeout_at(until, p.ping(h2::Ping::opaque())).await,
        Ok(Ok(_))
    );
    let log = crate::active::io::lock(&a.log);
    if let (true, Some(h)) = (answered, log.h2.as_ref())
        && let (Some(out), Some(back)) = (h.ping_out, h.ping_in)
    {
        a.conn.h2_ping = Some((out, back));
    }
}

/// The verdict of each record, from all the connection's records together
/// (a second request on a connection tells about the first).
fn judge(records: &mut [Record]) {
    let mut facts: Vec<_> = records.iter().map(Record::facts).collect();
    // A redirect followed on the connection asks for something else: its
    // TTFB is no repeat of the first's (the reuse rule compares those).
    if let Some(first) = records.first() {
        for (f, r) in facts.iter_mut().zip(records.iter()) {
            f.repeats_first = r.url == first.url && r.method == first.method;
        }
    }
    for (r, a) in records
        .iter_mut()
        .zip(crate::model::verdict::analyze(&facts))
    {
        r.verdict = Some(a.verdict);
        r.phases = a.phases;
        r.middlebox = a.middlebox;
    }
}

/// Unprivileged mode: the wire fields the socket's own timestamps and
/// TCP_INFO give, and null for the rest (never a made-up zero).
fn unprivileged_wire(
    r: &mut Record,
    s: &crate::active::stamps::Stamps,
    conn: Option<&ConnMarks>,
    requests: usize,
) {
    use crate::active::stamps::{TCPI_OPT_SACK, TCPI_OPT_TIMESTAMPS, TCPI_OPT_WSCALE};
    let response_in = r.at("response_in");
    let request_out = r.at("request_out");
    let w = &mut r.wire;
    if conn.is_some() {
        w.handshake_rtt_ms = s.handshake_rtt_ms();
        w.syn_retransmits = s.syn_retransmits();
        if let Some(i) = s.at_connect {
            w.synack_sack_permitted = Some(i.options & TCPI_OPT_SACK != 0);
            w.synack_timestamps = Some(i.options & TCPI_OPT_TIMESTAMPS != 0);
            w.synack_wscale = (i.options & TCPI_OPT_WSCALE != 0).then_some(i.snd_wscale);
        }
        // The span starts at connect(): the SYN leaves within microseconds.
        if let (Some(a), Some(b)) = (conn.and_then(|c| c.connect_call), response_in) {
            w.span_ms = Some(crate::model::units::ms_between(a, b));
        }
        // No SYN-ACK time of its own: connect() plus the handshake RTT, or,
        // when the SYN went again (no RTT for it), connect() returning: the
        // wait for the answered SYN is the network's, not ours.
        let synack = conn.and_then(|c| match w.handshake_rtt_ms {
            Some(h) => c.connect_call.map(|t| t + (h * 1e6).max(0.0) as u64),
            None => c.connect_done,
        });
        if let (Some(sa), Some(t)) = (synack, request_out) {
            let f = s.flow(FlowKey::default());
            w.client_turns_ms = Some(crate::model::units::ms_between(
                0,
                timeline::client_turns(&f, sa, t, conn.is_some_and(|c| c.tls13)),
            ));
        }
    }
    // Only outgoing retransmissions are counted (TCP_INFO), and only for the
    // whole connection: given when it carried one request.
    w.retransmits_in = None;
    w.retransmits = None;
    w.retransmits_out = if requests == 1 {
        s.retransmits_out()
    } else {
        None
    };
}

/// synack's User-Agent unless -A or -H sets one.
const USER_AGENT: &str = concat!("synack/", env!("CARGO_PKG_VERSION"));

/// The largest response head (status line and headers) synack reads.
pub(crate) const MAX_HEAD_BYTES: usize = 64 * 1024;

trait AsyncStream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> AsyncStream for T {}

/// The `dur` of the first metric of a Server-Timing header
/// (`app;dur=30.1, db;dur=2` gives 30.1).
fn server_timing_dur(h: &str) -> Option<f64> {
    let first = h.split(',').next()?;
    first.split(';').find_map(|p| {
        let (k, v) = p.trim().split_once('=')?;
        (k.trim().eq_ignore_ascii_case("dur"))
            .then(|| v.trim().trim_matches('"').parse().ok())
            .flatten()
    })
}

/// A header HTTP/2 does not carry: the connection-specific ones, and TE
/// other than "trailers".
fn h2_drops(name: &HeaderName, value: &HeaderValue) -> bool {
    name == header::CONNECTION
        || name == header::TRANSFER_ENCODING
        || name == header::UPGRADE
        || name.as_str() == "keep-alive"
        || name.as_str() == "proxy-connection"
        || (name == header::TE && !value.as_bytes().eq_ignore_ascii_case(b"trailers"))
}

/// Same scheme, host and port: a connection to one serves the other.
fn same_origin(a: &url::Url, b: &url::Url) -> bool {
    a.scheme() == b.scheme()
        && a.host_str().map(str::to_ascii_lowercase) == b.host_str().map(str::to_ascii_lowercase)
        && a.port_or_known_default() == b.port_or_known_default()
}

fn join_location(base: &url::Url, loc: &str) -> String {
    base.join(loc)
        .map(|u| u.to_string())
        .unwrap_or_else(|_| loc.to_string())
}

async fn with_deadline<F: Future>(
    deadline: Option<Instant>,
    phase: &str,
    f: F,
) -> Result<F::Output, ErrorInfo> {
    match deadline {
        None => Ok(f.await),
        Some(d) => tokio::time::timeout_at(d, f).await.map_err(|_| {
            ErrorInfo::new(
                ErrorKind::Timeout,
                format!("--max-time reached during {phase}"),
            )
        }),
    }
}

fn connect_error(addr: SocketAddr, e: std::io::Error) -> ErrorInfo {
    if e.kind() == std::io::ErrorKind::ConnectionRefused {
        ErrorInfo::new(
            ErrorKind::ConnectRefused,
            format!("{addr} refused the connection (RST to our SYN)"),
        )
    } else {
        ErrorInfo::new(ErrorKind::Connect, format!("connect to {addr}: {e}"))
    }
}

/// TTL-limited SYNs: the smallest TTL (hop limit) at which the destination's
/// port answers, trying 1 up to one more than the SYN-ACK's hops (at most 8).
/// These connections are not tracked and are closed at once.
async fn path_probe(
    addr: SocketAddr,
    w: &crate::model::record::WireTimes,
    deadline: Option<Instant>,
) -> Option<u8> {
    let max = w.synack_hops.unwrap_or(7).saturating_add(1).min(8);
    // A SYN that is answered comes back within a few handshake RTTs.
    let wait = Duration::from_secs_f64(
        (w.handshake_rtt_ms.unwrap_or(100.0) * 3.0 / 1000.0).clamp(0.05, 2.0),
    );
    for ttl in 1..=max {
        if deadline.is_some_and(|d| Instant::now() >= d) {
            return None;
        }
        let sock = if addr.is_ipv4() {
            TcpSocket::new_v4()
        } else {
            TcpSocket::new_v6()
        }
        .ok()?;
        let (level, opt) = if addr.is_ipv4() {
            (libc::IPPROTO_IP, libc::IP_TTL)
        } else {
            (libc::IPPROTO_IPV6, libc::IPV6_UNICAST_HOPS)
        };
        if !set_int_opt(sock.as_raw_fd(), level, opt, ttl as libc::c_int) {
            return None;
        }
        if let Ok(Ok(_)) = tokio::time::timeout(wait, sock.connect(addr)).await {
            return Some(ttl);
        }
    }
    None
}

/// Turns the stack's receive timestamping on for as long as the returned
/// socket lives. The first socket in the system to ask for it makes the
/// kernel switch a static key (code patched through a workqueue), which
/// held synack's thread 3.2-3.4 ms between the name lookup and connect()
/// in about half the runs in the lab (curl's time_connect has no such
/// step): asked once at start-up, before the kernel side loads, it is
/// done long before a request's timed phases.
pub(crate) fn hold_rx_timestamps() -> Option<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    // SAFETY: socket(2) with constant arguments; the fd is checked below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return None;
    }
    // SAFETY: fd was just returned by socket(2) and is owned by nothing else.
    let owned = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
    enable_rx_timestamps(owned.as_raw_fd());
    Some(owned)
}

fn enable_rx_timestamps(fd: i32) {
    // Best effort: without it the classifier's own time is used.
    let _ = set_int_opt(fd, libc::SOL_SOCKET, libc::SO_TIMESTAMPNS, 1);
}

/// setsockopt with an int value; true on success.
fn set_int_opt(fd: i32, level: libc::c_int, opt: libc::c_int, v: libc::c_int) -> bool {
    // SAFETY: fd is a socket we own; the value is a c_int of the stated size.
    unsafe {
        libc::setsockopt(
            fd,
            level,
            opt,
            (&v as *const libc::c_int).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        ) == 0
    }
}

/// The socket's cookie (SO_COOKIE), the id the kernel side tracks it by.
fn socket_cookie(fd: i32) -> Option<u64> {
    let mut v: u64 = 0;
    let mut len = size_of::<u64>() as libc::socklen_t;
    // SAFETY: fd is a live socket we own; v and len are valid for writes of the stated size.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_COOKIE,
            (&mut v as *mut u64).cast(),
            &mut len,
        )
    };
    (rc == 0 && v != 0).then_some(v)
}

/// The counters' growth as the record gives it, in ms.
fn stall_of(g: &crate::host::cpustat::Growth) -> crate::model::verdict::ClientStall {
    let ms = |x: Option<u64>| x.map(|v| v as f64 / 1e6);
    crate::model::verdict::ClientStall {
        run_delay_ms: ms(g.run_delay_ns),
        throttled_ms: ms(g.throttled_ns),
        throttled_periods: g.throttled_periods,
        steal_ms: ms(g.steal_ns),
    }
}

/// What the handshake settled: version, ALPN, and whose certificate came.
fn tls_info(c: &rustls::ClientConnection) -> crate::model::record::TlsInfo {
    let version = c.protocol_version().map(|v| match v {
        rustls::ProtocolVersion::TLSv1_3 => "TLSv1.3".to_string(),
        rustls::ProtocolVersion::TLSv1_2 => "TLSv1.2".to_string(),
        other => format!("{other:?}"),
    });
    let alpn = c
        .alpn_protocol()
        .map(|p| String::from_utf8_lossy(p).into_owned());
    let leaf = c
        .peer_certificates()
        .and_then(|v| v.first())
        .and_then(|der| x509_parser::parse_x509_certificate(der.as_ref()).ok())
        .map(|(_, cert)| (cert.subject().to_string(), cert.issuer().to_string()));
    crate::model::record::TlsInfo {
        version,
        alpn,
        cert_subject: leaf.as_ref().map(|x| x.0.clone()),
        cert_issuer: leaf.map(|x| x.1),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolve_override_parses_like_curl() {
        let r: Resolve = "Example.com:443:10.0.0.1".parse().unwrap();
        assert_eq!(r.host, "example.com");
        assert_eq!(r.port, 443);
        assert_eq!(r.addr, "10.0.0.1".parse::<IpAddr>().unwrap());
        let r: Resolve = "h:80:[fd00::1]".parse().unwrap();
        assert_eq!(r.addr, "fd00::1".parse::<IpAddr>().unwrap());
        assert!("h:80".parse::<Resolve>().is_err());
        assert!("h:x:1.2.3.4".parse::<Resolve>().is_err());
    }

    #[test]
    fn targets_and_their_errors() {
        let t = parse_target("https://[fd00::2]:8443/x?y=1").unwrap();
        assert!(t.tls);
        assert_eq!(t.host, "fd00::2");
        assert_eq!(t.port, 8443);
        assert_eq!(parse_target("http://h/").unwrap().port, 80);
        assert_eq!(
            parse_target("ftp://h/").unwrap_err().kind,
            "unsupported_scheme"
        );
        assert_eq!(parse_target("not a url").unwrap_err().kind, "invalid_url");
    }

    #[test]
    fn server_timing_first_duration() {
        assert_eq!(server_timing_dur("app;dur=30.125"), Some(30.125));
        assert_eq!(server_timing_dur("cache;desc=hit, app;dur=2"), None);
        assert_eq!(
            server_timing_dur("app;desc=\"x\";dur=\"7\", db;dur=2"),
            Some(7.0)
        );
        assert_eq!(server_timing_dur("garbage"), None);
    }

    #[test]
    fn http2_leaves_connection_headers_out() {
        let v = |s: &str| HeaderValue::from_str(s).expect("value");
        let n = |s: &str| HeaderName::from_bytes(s.as_bytes()).expect("name");
        for h in [
            "connection",
            "keep-alive",
            "proxy-connection",
            "transfer-encoding",
            "upgrade",
        ] {
            assert!(h2_drops(&n(h), &v("x")), "{h}");
        }
        assert!(h2_drops(&n("te"), &v("gzip")));
        assert!(!h2_drops(&n("te"), &v("Trailers")));
        assert!(!h2_drops(&n("x-trace"), &v("1")));
        assert!(!h2_drops(&n("accept"), &v("*/*")));
    }

    #[test]
    fn same_origin_is_scheme_host_and_port() {
        let u = |s: &str| url::Url::parse(s).expect("url");
        assert!(same_origin(&u("http://H.lab/a"), &u("http://h.lab:80/b?x")));
        assert!(same_origin(
            &u("https://[fd00::1]:8443/"),
            &u("https://[fd00::1]:8443/x")
        ));
        assert!(!same_origin(&u("http://h.lab/"), &u("https://h.lab/")));
        assert!(!same_origin(&u("http://h.lab/"), &u("http://h.lab:8080/")));
        assert!(!same_origin(&u("http://h.lab/"), &u("http://other.lab/")));
    }

    #[test]
    fn redirects_resolve_against_the_url() {
        let b = url::Url::parse("http://h:8080/a/b").unwrap();
        assert_eq!(join_location(&b, "/c"), "http://h:8080/c");
        assert_eq!(join_location(&b, "https://x/"), "https://x/");
    }
}
