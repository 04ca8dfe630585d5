//! Explicit proxies as curl chooses them: `-x/--proxy`, `--noproxy`, and
//! the `http_proxy`, `HTTPS_PROXY`, `ALL_PROXY` and `NO_PROXY` environment.
//! Pure: the environment is read at the edge and handed in.

use crate::model::record::{ErrorInfo, ErrorKind};

/// A proxy to go through: an HTTP proxy (plain requests in absolute form,
/// HTTPS through a CONNECT tunnel).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Proxy {
    /// Host name or address (an IPv6 address without brackets).
    pub host: String,
    pub port: u16,
    /// user:password from the proxy URL or `--proxy-user`, for Basic auth.
    pub credentials: Option<(String, String)>,
    /// Where the choice came from: "-x", "http_proxy", "HTTPS_PROXY", ...
    pub from: &'static str,
}

impl Proxy {
    /// `http://host:port`, without credentials: what records and messages show.
    pub(crate) fn display(&self) -> String {
        if self.host.contains(':') {
            format!("http://[{}]:{}", self.host, self.port)
        } else {
            format!("http://{}:{}", self.host, self.port)
        }
    }

    /// The `Proxy-Authorization` header's value, when credentials are set.
    pub(crate) fn authorization(&self) -> Option<String> {
        use base64::Engine as _;
        let (u, p) = self.credentials.as_ref()?;
        Some(format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"))
        ))
    }
}

/// curl's default proxy port.
const DEFAULT_PORT: u16 = 1080;

/// Parses a proxy as curl takes it: `[http://][user:pass@]host[:port]`
/// (no scheme means http, no port means 1080).
pub(crate) fn parse_proxy(s: &str, from: &'static str) -> Result<Proxy, ErrorInfo> {
    let bad = |why: String| ErrorInfo::new(ErrorKind::InvalidUrl, why);
    let with_scheme = if s.contains("://") {
        s.to_string()
    } else {
        format!("http://{s}")
    };
    let u = url::Url::parse(&with_scheme)
        .map_err(|e| bad(format!("cannot parse the proxy {s:?} (from {from}): {e}")))?;
    match u.scheme() {
        "http" => {}
        "https" | "socks4" | "socks4a" | "socks5" | "socks5h" => {
            return Err(ErrorInfo::new(
                ErrorKind::UnsupportedScheme,
                format!(
                    "proxy scheme {:?} (from {from}) is not supported: synack speaks to \
                     HTTP proxies only (http://host:port)",
                    u.scheme()
                ),
            ));
        }
        other => {
            return Err(ErrorInfo::new(
                ErrorKind::UnsupportedScheme,
                format!("proxy scheme {other:?} (from {from}) is not known: use http://host:port"),
            ));
        }
    }
    let host = match u.host() {
        Some(url::Host::Ipv6(a)) => a.to_string(),
        Some(h) => h.to_string(),
        None => return Err(bad(format!("the proxy {s:?} (from {from}) has no host"))),
    };
    // url::Url drops the scheme's default port (80); curl's default for a
    // proxy is 1080, so an explicit :80 must be read from the text.
    let port = match u.port() {
        Some(p) => p,
        None if has_explicit_port(&with_scheme) => 80,
        None => DEFAULT_PORT,
    };
    let credentials = (!u.username().is_empty()).then(|| {
        (
            percent(u.username()),
            u.password().map(percent).unwrap_or_default(),
        )
    });
    Ok(Proxy {
        host,
        port,
        credentials,
        from,
    })
}

/// Whether the authority of `url` (scheme given) ends in `:PORT`.
fn has_explicit_port(url: &str) -> bool {
    let rest = url.split_once("://").map_or(url, |x| x.1);
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let host_port = authority.rsplit_once('@').map_or(authority, |x| x.1);
    match host_port.rsplit_once(':') {
        Some((h, p)) => !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) && !h.ends_with(':'),
        None => false,
    }
}

/// %XX decoding of a URL's user or password, as curl decodes them.
fn percent(s: &str) -> String {
    percent_encoding::percent_decode_str(s)
        .decode_utf8_lossy()
        .into_owned()
}

/// The proxy environment, as read by the caller (curl's names).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct ProxyEnv {
    /// `http_proxy` (lowercase only: curl ignores HTTP_PROXY, which a CGI
    /// server would set from a request's `Proxy:` header).
    pub http_proxy: Option<String>,
    /// `https_proxy`, else `HTTPS_PROXY`.
    pub https_proxy: Option<String>,
    /// `all_proxy`, else `ALL_PROXY`.
    pub all_proxy: Option<String>,
    /// `no_proxy`, else `NO_PROXY`.
    pub no_proxy: Option<String>,
}

impl ProxyEnv {
    /// Reads the variables with `get` (std::env::var in the binary).
    pub(crate) fn read(get: impl Fn(&str) -> Option<String>) -> Self {
        let either = |lower: &str, upper: &str| {
            get(lower)
                .or_else(|| get(upper))
                .filter(|v| !v.trim().is_empty())
        };
        ProxyEnv {
            http_proxy: get("http_proxy").filter(|v| !v.trim().is_empty()),
            https_proxy: either("https_proxy", "HTTPS_PROXY"),
            all_proxy: either("all_proxy", "ALL_PROXY"),
            no_proxy: either("no_proxy", "NO_PROXY"),
        }
    }
}

/// Everything that decides the proxy of a URL: the command line over the
/// environment.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct ProxyConfig {
    /// `-x`: Some("") turns proxies off whatever the environment says.
    pub proxy: Option<String>,
    /// `--noproxy`: replaces NO_PROXY.
    pub noproxy: Option<String>,
    /// `-U/--proxy-user user:password`: overrides the URL's.
    pub proxy_user: Option<String>,
    pub env: ProxyEnv,
}

impl ProxyConfig {
    /// The proxy for a request to `scheme://host` (None: go direct).
    pub(crate) fn for_url(&self, scheme: &str, host: &str) -> Result<Option<Proxy>, ErrorInfo> {
        let (text, from) = match &self.proxy {
            Some(p) if p.is_empty() => return Ok(None),
            Some(p) => (p.as_str(), "-x"),
            None => {
                let by_scheme = match scheme {
                    "http" => self.env.http_proxy.as_deref().map(|p| (p, "http_proxy")),
                    "https" => self.env.https_proxy.as_deref().map(|p| (p, "HTTPS_PROXY")),
                    _ => None,
                };
                match by_scheme.or_else(|| self.env.all_proxy.as_deref().map(|p| (p, "ALL_PROXY")))
                {
                    Some(x) => x,
                    None => return Ok(None),
                }
            }
        };
        let list = self.noproxy.as_deref().or(self.env.no_proxy.as_deref());
        if list.is_some_and(|l| no_proxy_matches(l, host)) {
            return Ok(None);
        }
        let mut p = parse_proxy(text, from)?;
        if let Some(up) = &self.proxy_user {
            let (u, pw) = up.split_once(':').unwrap_or((up.as_str(), ""));
            p.credentials = Some((u.to_string(), pw.to_string()));
        }
        Ok(Some(p))
    }
}

/// curl's NO_PROXY rule: a comma-separated list of names, each matching
/// the host itself and its subdomains (a leading dot is optional), `*`
/// alone matching every host; addresses match exactly, or by prefix
/// length when given as CIDR.
pub(crate) fn no_proxy_matches(list: &str, host: &str) -> bool {
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .trim_end_matches('.')
        .to_ascii_lowercase();
    let ip: Option<std::net::IpAddr> = host.parse().ok();
    // As curl: "*" alone matches every host; a "*" among names is no
    // wildcard.
    if list.trim() == "*" {
        return true;
    }
    list.split([',', ' '])
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .any(|e| {
            let e = e.trim_start_matches('[').to_ascii_lowercase();
            if let Some(ip) = ip {
                return ip_matches(&e, ip);
            }
            let name = e.trim_start_matches('.').trim_end_matches('.');
            // A port in an entry is ignored, as curl does.
            let name = match name.rsplit_once(':') {
                Some((n, p)) if p.bytes().all(|b| b.is_ascii_digit()) && !n.contains(':') => n,
                _ => name,
            };
            !name.is_empty()
                && (host == name
                    || (host.len() > name.len()
                        && host.ends_with(name)
                        && host.as_bytes()[host.len() - name.len() - 1] == b'.'))
        })
}

fn ip_matches(entry: &str, ip: std::net::IpAddr) -> bool {
    let entry = entry.trim_end_matches(']');
    if let Ok(net) = entry.parse::<ipnet::IpNet>() {
        return net.contains(&ip);
    }
    // "[fd00::1]/64" once the brackets are gone: "fd00::1]/64".
    if let Some((a, bits)) = entry.split_once('/')
        && let Ok(net) = format!("{}/{bits}", a.trim_end_matches(']')).parse::<ipnet::IpNet>()
    {
        return net.contains(&ip);
    }
    entry.parse::<std::net::IpAddr>() == Ok(ip)
}

/// A proxy's answer to CONNECT, as far as the tunnel needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ConnectAnswer {
    pub status: u16,
    /// The status line's reason phrase.
    pub reason: String,
    /// Bytes read past the head (none from a proxy that waits for our
    /// ClientHello, as it must).
    pub extra: usize,
}

impl ConnectAnswer {
    /// The error a non-2xx answer is: 407 asks for credentials, any other
    /// status refuses the tunnel.
    pub(crate) fn error(&self, p: &Proxy) -> Option<ErrorInfo> {
        let status = format!("{} {}", self.status, self.reason)
            .trim_end()
            .to_string();
        match self.status {
            200..=299 => None,
            407 => Some(ErrorInfo::new(
                ErrorKind::ProxyAuth,
                format!(
                    "proxy {} answered CONNECT with {status}: {}",
                    p.display(),
                    if p.credentials.is_some() {
                        "it refused the credentials given"
                    } else {
                        "it wants credentials (give them with -U USER:PASSWORD, or in the proxy \
                         URL as http://USER:PASSWORD@HOST:PORT)"
                    }
                ),
            )),
            _ => Some(ErrorInfo::new(
                ErrorKind::ProxyTunnel,
                format!(
                    "proxy {} answered CONNECT with {status}: no tunnel to the origin",
                    p.display()
                ),
            )),
        }
    }
}

/// Parses the head of a CONNECT answer (`HTTP/1.x NNN reason`, headers,
/// blank line) from the bytes read so far.
pub(crate) fn connect_answer(bytes: &[u8]) -> Result<ConnectAnswer, String> {
    let Some(end) = bytes.windows(4).position(|w| w == b"\r\n\r\n") else {
        return Err(format!(
            "its answer to CONNECT has no end of head in {} bytes",
            bytes.len()
        ));
    };
    let head = String::from_utf8_lossy(&bytes[..end]);
    let line = head.lines().next().unwrap_or("");
    let mut parts = line.splitn(3, ' ');
    let version = parts.next().unwrap_or("");
    let code = parts.next().unwrap_or("");
    if !version.starts_with("HTTP/1.") || code.len() != 3 {
        return Err(format!("its answer to CONNECT is not HTTP: {line:?}"));
    }
    let status = code
        .parse::<u16>()
        .map_err(|_| format!("its answer to CONNECT has no status: {line:?}"))?;
    Ok(ConnectAnswer {
        status,
        reason: parts.next().unwrap_or("").trim().to_string(),
        extra: bytes.len() - end - 4,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proxies_parse_as_curl_reads_them() {
        let p = parse_proxy("10.0.0.1:3128", "-x").expect("plain");
        assert_eq!(
            (p.host.as_str(), p.port, p.credentials.clone()),
            ("10.0.0.1", 3128, None)
        );
        assert_eq!(p.display(), "http://10.0.0.1:3128");
        assert_eq!(parse_proxy("proxy.lab", "-x").expect("no port").port, 1080);
        assert_eq!(
            parse_proxy("http://proxy.lab:80", "-x").expect("80").port,
            80
        );
        assert_eq!(
            parse_proxy("http://proxy.lab/", "-x").expect("slash").port,
            1080
        );
        let p = parse_proxy("http://al%40ice:s%3Acret@[fd00::1]:8080", "-x").expect("v6, user");
        assert_eq!(p.host, "fd00::1");
        assert_eq!(p.display(), "http://[fd00::1]:8080");
        assert_eq!(p.credentials, Some(("al@ice".into(), "s:cret".into())));
        // "al@ice:s:cret" in base64.
        assert_eq!(
            p.authorization().as_deref(),
            Some("Basic YWxAaWNlOnM6Y3JldA==")
        );
        for s in ["socks5://h:1080", "https://h:443", "ftp://h"] {
            assert_eq!(
                parse_proxy(s, "-x").expect_err(s).kind,
                ErrorKind::UnsupportedScheme,
                "{s}"
            );
        }
        assert_eq!(
            parse_proxy("http://", "-x").expect_err("no host").kind,
            ErrorKind::InvalidUrl
        );
    }

    #[test]
    fn the_proxy_is_chosen_as_curl_chooses_it() {
        let env = ProxyEnv::read(|k| {
            match k {
                "http_proxy" => Some("http-p:1"),
                "HTTP_PROXY" => Some("ignored-as-curl-does:9"),
                "HTTPS_PROXY" => Some("https-p:2"),
                "ALL_PROXY" => Some("all-p:3"),
                "NO_PROXY" => Some("internal.lab, .corp,10.1.0.0/16"),
                _ => None,
            }
            .map(str::to_string)
        });
        let cfg = ProxyConfig {
            env: env.clone(),
            ..Default::default()
        };
        let host = |scheme, h| {
            cfg.for_url(scheme, h)
                .expect("ok")
                .map(|p| (p.host, p.from))
        };
        assert_eq!(
            host("http", "a.example"),
            Some(("http-p".into(), "http_proxy"))
        );
        assert_eq!(
            host("https", "a.example"),
            Some(("https-p".into(), "HTTPS_PROXY"))
        );
        assert_eq!(host("https", "internal.lab"), None);
        assert_eq!(host("https", "x.internal.lab"), None);
        assert_eq!(
            host("https", "notinternal.lab"),
            Some(("https-p".into(), "HTTPS_PROXY"))
        );
        assert_eq!(host("http", "db.corp"), None);
        assert_eq!(host("http", "10.1.2.3"), None);
        assert_eq!(
            host("http", "10.2.2.3"),
            Some(("http-p".into(), "http_proxy"))
        );
        // ALL_PROXY when the scheme's own is unset.
        let only_all = ProxyConfig {
            env: ProxyEnv {
                all_proxy: Some("all-p:3".into()),
                ..Default::default()
            },
            ..Default::default()
        };
        assert_eq!(
            only_all.for_url("https", "h").expect("ok").map(|p| p.port),
            Some(3)
        );
        // -x over the environment, --noproxy over NO_PROXY, -x "" turns it off.
        let cli = ProxyConfig {
            proxy: Some("cli-p:4".into()),
            noproxy: Some("a.example".into()),
            proxy_user: Some("u:p:w".into()),
            env: env.clone(),
        };
        assert_eq!(cli.for_url("https", "a.example").expect("ok"), None);
        let p = cli
            .for_url("https", "internal.lab")
            .expect("ok")
            .expect("proxied");
        assert_eq!((p.host.as_str(), p.from), ("cli-p", "-x"));
        assert_eq!(p.credentials, Some(("u".into(), "p:w".into())));
        let off = ProxyConfig {
            proxy: Some(String::new()),
            env,
            ..Default::default()
        };
        assert_eq!(off.for_url("http", "a.example").expect("ok"), None);
    }

    #[test]
    fn connect_answers_and_their_errors() {
        let ok = connect_answer(b"HTTP/1.1 200 Connection established\r\n\r\n").expect("200");
        assert_eq!(
            (ok.status, ok.reason.as_str(), ok.extra),
            (200, "Connection established", 0)
        );
        let p = parse_proxy("127.0.0.1:3128", "-x").expect("proxy");
        assert_eq!(ok.error(&p), None);
        let auth = connect_answer(
            b"HTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: Basic\r\n\r\n<html>",
        )
        .expect("407");
        assert_eq!(auth.extra, 6);
        let e = auth.error(&p).expect("an error");
        assert_eq!(e.kind, ErrorKind::ProxyAuth);
        assert!(e.message.contains("-U USER:PASSWORD"), "{}", e.message);
        let with_creds = parse_proxy("u:p@127.0.0.1:3128", "-x").expect("proxy");
        assert!(
            auth.error(&with_creds)
                .expect("an error")
                .message
                .contains("refused the credentials")
        );
        let denied = connect_answer(b"HTTP/1.0 403 Forbidden\r\n\r\n").expect("403");
        let e = denied.error(&p).expect("an error");
        assert_eq!(e.kind, ErrorKind::ProxyTunnel);
        assert!(e.message.contains("403 Forbidden"), "{}", e.message);
        assert!(connect_answer(b"SSH-2.0-OpenSSH\r\n\r\n").is_err());
        assert!(connect_answer(b"HTTP/1.1 200 OK\r\n").is_err());
        assert!(connect_answer(b"HTTP/1.1 2x0 OK\r\n\r\n").is_err());
    }

    #[test]
    fn no_proxy_lists_match_as_curls() {
        assert!(no_proxy_matches("*", "anything"));
        assert!(no_proxy_matches(" * ", "anything"));
        assert!(!no_proxy_matches("a.lab,*", "anything"));
        assert!(no_proxy_matches("Example.COM", "www.example.com."));
        assert!(!no_proxy_matches("example.com", "badexample.com"));
        assert!(no_proxy_matches("example.com:8080", "example.com"));
        assert!(no_proxy_matches("::1,fd00::/16", "[fd00:2::1]"));
        assert!(!no_proxy_matches("fd01::/16", "fd00:2::1"));
        assert!(no_proxy_matches("10.10.2.1", "10.10.2.1"));
        assert!(!no_proxy_matches("10.10.2.1", "10.10.2.10"));
        assert!(no_proxy_matches("10.0.0.0/8", "10.10.2.10"));
        assert!(!no_proxy_matches("", "h"));
        assert!(!no_proxy_matches(" , ", "h"));
    }
}
