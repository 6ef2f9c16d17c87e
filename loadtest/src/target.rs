//! Target URLs and the safety rule: a load generator only ever aims at
//! loopback, or at a private address the operator named with `--allow-host`
//! (a container on the local Podman bridge). A `Target` can only be built
//! through [`Target::parse`], so every target in a plan has passed the check.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use http::{HeaderValue, Uri};

use crate::Error;

/// Private addresses the operator explicitly allowed besides loopback.
#[derive(Debug, Clone, Default)]
pub struct AllowList(Vec<IpAddr>);

impl AllowList {
    /// Parses `--allow-host` values; each must be a private IP address
    /// (10/8, 172.16/12, 192.168/16, fc00::/7) — never a public one or a name.
    pub fn new<S: AsRef<str>>(hosts: &[S]) -> Result<Self, Error> {
        hosts
            .iter()
            .map(|h| {
                let text = h
                    .as_ref()
                    .trim()
                    .trim_start_matches('[')
                    .trim_end_matches(']');
                match text.parse::<IpAddr>() {
                    Ok(ip) if is_private(ip) || ip.is_loopback() => Ok(ip),
                    _ => Err(Error::AllowHost(h.as_ref().to_owned())),
                }
            })
            .collect::<Result<_, _>>()
            .map(Self)
    }

    fn permits(&self, ip: IpAddr) -> bool {
        ip.is_loopback() || self.0.contains(&ip)
    }
}

fn is_private(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_private(),
        IpAddr::V6(v6) => (v6.segments()[0] & 0xfe00) == 0xfc00,
    }
}

/// One URL to load: where to connect, what to put in `Host`, which path to ask.
#[derive(Debug, Clone)]
pub struct Target {
    url: String,
    addr: SocketAddr,
    host_header: HeaderValue,
    path: Uri,
}

impl Target {
    /// Parses an `http://` URL and checks its host against loopback and
    /// `allow`. `field` names the flag or scenario key in error messages.
    pub fn parse(field: &str, url: &str, allow: &AllowList) -> Result<Self, Error> {
        let bad = |reason: &str| Error::Url {
            field: field.to_owned(),
            url: url.to_owned(),
            reason: reason.to_owned(),
        };
        let uri: Uri = url
            .parse()
            .map_err(|e: http::uri::InvalidUri| bad(&e.to_string()))?;
        match uri.scheme_str() {
            Some("http") => {}
            Some(other) => {
                return Err(bad(&format!(
                    "scheme {other:?} is not supported, only http"
                )));
            }
            None => return Err(bad("missing scheme, expected http://HOST[:PORT]/PATH")),
        }
        let authority = uri.authority().ok_or_else(|| bad("missing host"))?;
        if authority.as_str().contains('@') {
            return Err(bad("credentials in the url are not supported"));
        }
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']');
        let ip = if host.eq_ignore_ascii_case("localhost") {
            IpAddr::V4(Ipv4Addr::LOCALHOST)
        } else {
            host.parse::<IpAddr>().map_err(|_| Error::Refused {
                field: field.to_owned(),
                host: host.to_owned(),
            })?
        };
        if !allow.permits(ip) {
            return Err(Error::Refused {
                field: field.to_owned(),
                host: host.to_owned(),
            });
        }
        let port = authority.port_u16().unwrap_or(80);
        let host_header = HeaderValue::from_str(authority.as_str()).map_err(|_| bad("bad host"))?;
        let path = uri
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .parse::<Uri>()
            .map_err(|e| bad(&e.to_string()))?;
        Ok(Self {
            url: url.to_owned(),
            addr: SocketAddr::new(ip, port),
            host_header,
            path,
        })
    }

    /// The URL as given.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The socket address connections go to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub(crate) fn host_header(&self) -> &HeaderValue {
        &self.host_header
    }

    pub(crate) fn path(&self) -> &Uri {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn none() -> AllowList {
        AllowList::default()
    }

    #[test]
    fn loopback_accepted() {
        for url in [
            "http://127.0.0.1:8080/fn/hello/",
            "http://127.1.2.3/",
            "http://localhost:9000/x?y=1",
            "http://[::1]:8080/",
        ] {
            let t = Target::parse("url", url, &none()).unwrap_or_else(|e| panic!("{url}: {e}"));
            assert!(t.addr().ip().is_loopback(), "{url}");
        }
        let t = Target::parse("url", "http://localhost:9000/x?y=1", &none()).unwrap();
        assert_eq!(t.addr(), "127.0.0.1:9000".parse().unwrap());
        assert_eq!(t.path().to_string(), "/x?y=1");
        assert_eq!(t.host_header(), "localhost:9000");
        let t = Target::parse("url", "http://127.0.0.1", &none()).unwrap();
        assert_eq!(t.addr().port(), 80);
        assert_eq!(t.path().to_string(), "/");
    }

    #[test]
    fn non_loopback_refused() {
        for url in [
            "http://10.89.0.5:8080/",
            "http://93.184.216.34/",
            "http://example.com/",
            "http://[2001:db8::1]/",
            "http://0.0.0.0:8080/",
        ] {
            let err = Target::parse("target", url, &none()).unwrap_err();
            assert!(matches!(err, Error::Refused { .. }), "{url}: {err}");
            assert!(err.to_string().starts_with("target: refusing"), "{err}");
        }
    }

    #[test]
    fn allowed_private_address_accepted_only_when_listed() {
        let allow = AllowList::new(&["10.89.0.5"]).unwrap();
        Target::parse("url", "http://10.89.0.5:8080/", &allow).unwrap();
        assert!(Target::parse("url", "http://10.89.0.6:8080/", &allow).is_err());
    }

    #[test]
    fn allow_list_refuses_public_addresses_and_names() {
        for host in ["8.8.8.8", "example.com", "2001:db8::1"] {
            assert!(
                matches!(AllowList::new(&[host]), Err(Error::AllowHost(_))),
                "{host}"
            );
        }
        AllowList::new(&["192.168.1.2", "172.16.0.1", "fd00::1"]).unwrap();
    }

    #[test]
    fn only_http() {
        let err = Target::parse("url", "https://127.0.0.1/", &none()).unwrap_err();
        assert!(err.to_string().contains("only http"), "{err}");
        assert!(Target::parse("url", "127.0.0.1:8080/", &none()).is_err());
    }
}
