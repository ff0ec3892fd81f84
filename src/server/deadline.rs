//! The client's deadline, from the `grpc-timeout` header.

use std::time::Duration;

use http::HeaderMap;

/// Clients give up (tonic: CANCELLED "Timeout expired") when their deadline passes, and
/// tokio's timers tick in milliseconds: the service answers DEADLINE_EXCEEDED a little
/// earlier, 10% of the client's timeout but at least 2 ms, so the answer arrives in time
/// even from a busy server. A request that waited 90% of its deadline had no chance anyway.
const EARLY_MIN: Duration = Duration::from_millis(2);

/// The client's timeout. tonic strips `grpc-timeout` from a request's metadata, so
/// [`record_client_timeout`] copies it into the extensions first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientTimeout(pub Duration);

/// Runs as a tower layer in front of the services.
pub fn record_client_timeout<B>(mut request: http::Request<B>) -> http::Request<B> {
    if let Some(timeout) = client_timeout(request.headers()) {
        request.extensions_mut().insert(ClientTimeout(timeout));
    }
    request
}

fn client_timeout(headers: &HeaderMap) -> Option<Duration> {
    parse(headers.get("grpc-timeout")?.to_str().ok()?)
}

/// Time the service has for a request: the client's deadline (less a margin), capped by
/// the server's own limit, which also applies when the client sets none.
pub fn budget(client: Option<ClientTimeout>, server_limit: Duration) -> Duration {
    client.map_or(server_limit, |ClientTimeout(t)| {
        t.saturating_sub(EARLY_MIN.max(t / 10)).min(server_limit)
    })
}

/// `grpc-timeout` is at most 8 digits and a unit: H, M, S, m (ms), u (µs), n (ns).
fn parse(value: &str) -> Option<Duration> {
    let (digits, unit) = value.split_at(value.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_unit_and_rejects_garbage() {
        assert_eq!(parse("2S"), Some(Duration::from_secs(2)));
        assert_eq!(parse("150m"), Some(Duration::from_millis(150)));
        assert_eq!(parse("7u"), Some(Duration::from_micros(7)));
        assert_eq!(parse("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(parse("123456789S"), None);
        assert_eq!(parse("5x"), None);
        assert_eq!(parse("m"), None);
        assert_eq!(parse(""), None);
    }

    #[test]
    fn server_limit_caps_the_client() {
        let limit = Duration::from_millis(500);
        let timeout = |header: &str| {
            let request = http::Request::builder()
                .header("grpc-timeout", header)
                .body(())
                .unwrap();
            record_client_timeout(request)
                .extensions()
                .get::<ClientTimeout>()
                .copied()
        };
        assert_eq!(budget(None, limit), limit);
        assert_eq!(budget(timeout("20S"), limit), limit);
        assert_eq!(budget(timeout("100m"), limit), Duration::from_millis(90));
        assert_eq!(budget(timeout("10m"), limit), Duration::from_millis(8));
        assert_eq!(budget(timeout("1m"), limit), Duration::ZERO);
        assert_eq!(timeout("soon"), None);
    }
}
