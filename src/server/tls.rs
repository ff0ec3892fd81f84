//! TLS on the gRPC listener: a server certificate and key and, for mutual TLS, a client CA
//! whose certificates every client must present. The files are re-read when they change
//! (a rotated Kubernetes secret, cert-manager's renewal), so new connections get the new
//! certificate without a restart; a rotation that does not parse keeps the last good
//! configuration and says so. Handshakes run off the accept loop, each with a deadline, so
//! a client that stalls its handshake holds only its own connection slot.

use std::io;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use tokio::sync::mpsc;
use tokio_rustls::rustls::crypto::{ring, CryptoProvider};
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{RootCertStore, ServerConfig};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt};

use crate::config::TlsFiles;
use crate::telemetry;

/// A client that has not finished its handshake by then is disconnected.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The current TLS configuration and the file state it was built from.
pub struct Tls {
    files: TlsFiles,
    config: ArcSwap<ServerConfig>,
    stamp: Mutex<Vec<Stamp>>,
}

/// What tells a file changed: its size and modification time (through symlinks, which is
/// how Kubernetes swaps a mounted secret).
type Stamp = Option<(u64, SystemTime)>;

impl Tls {
    /// Reads and checks the files; an error names the file and what is wrong with it.
    pub fn load(files: TlsFiles) -> Result<Arc<Tls>, String> {
        let stamp = stamps(&files);
        let config = build(&files)?;
        Ok(Arc::new(Tls {
            files,
            config: ArcSwap::from_pointee(config),
            stamp: Mutex::new(stamp),
        }))
    }

    /// Rebuilds the configuration if a file changed since it was last read. A broken file
    /// is logged and counted, and the previous configuration stays in use.
    pub fn reload_if_changed(&self) {
        let now = stamps(&self.files);
        let mut seen = self.stamp.lock().unwrap_or_else(|e| e.into_inner());
        if *seen == now {
            return;
        }
        *seen = now;
        match build(&self.files) {
            Ok(config) => {
                self.config.store(Arc::new(config));
                telemetry::tls_reloaded(true);
                tracing::info!(cert = %self.files.cert.display(), "TLS files changed: reloaded");
            }
            Err(why) => {
                telemetry::tls_reloaded(false);
                tracing::warn!(%why, "TLS files changed but do not load: keeping the previous ones");
            }
        }
    }

    /// `incoming`'s connections after a successful TLS handshake, in the order they finish.
    pub fn accept<S, C>(
        self: Arc<Self>,
        incoming: S,
    ) -> impl Stream<Item = io::Result<TlsStream<C>>>
    where
        S: Stream<Item = io::Result<C>> + Send + 'static,
        C: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        // Bounded by the connection limit upstream: each connection is one task.
        let (done, handshaken) = mpsc::channel(64);
        tokio::spawn(async move {
            tokio::pin!(incoming);
            loop {
                // Ends with the server: when it stops taking connections, the listener closes.
                let accepted = tokio::select! {
                    accepted = incoming.next() => accepted,
                    () = done.closed() => return,
                };
                let Some(accepted) = accepted else { return };
                let stream = match accepted {
                    Ok(stream) => stream,
                    Err(e) => {
                        if done.send(Err(e)).await.is_err() {
                            return;
                        }
                        continue;
                    }
                };
                let acceptor = TlsAcceptor::from(self.config.load_full());
                let done = done.clone();
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => {
                            let _ = done.send(Ok(tls)).await;
                        }
                        Ok(Err(e)) => {
                            telemetry::tls_handshake_failed();
                            tracing::debug!(%e, "TLS handshake failed");
                        }
                        Err(_) => {
                            telemetry::tls_handshake_failed();
                            tracing::debug!("TLS handshake timed out");
                        }
                    }
                });
            }
        });
        ReceiverStream::new(handshaken)
    }
}

fn stamps(files: &TlsFiles) -> Vec<Stamp> {
    let paths = [
        Some(&files.cert),
        Some(&files.key),
        files.client_ca.as_ref(),
    ];
    paths
        .into_iter()
        .flatten()
        .map(|p| {
            let meta = std::fs::metadata(p).ok()?;
            Some((meta.len(), meta.modified().ok()?))
        })
        .collect()
}

fn build(files: &TlsFiles) -> Result<ServerConfig, String> {
    let provider = Arc::new(ring::default_provider());
    let certs = certificates(&files.cert)?;
    let key = PrivateKeyDer::from_pem_file(&files.key)
        .map_err(|e| format!("{}: no private key: {e}", files.key.display()))?;
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let builder = match &files.client_ca {
        Some(ca) => builder.with_client_cert_verifier(client_verifier(ca, provider)?),
        None => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(certs, key)
        .map_err(|e| format!("{} with {}: {e}", files.cert.display(), files.key.display()))?;
    // gRPC runs over HTTP/2 only; clients such as grpcio refuse a server without h2 ALPN.
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: holds no PEM certificate", path.display()));
    }
    Ok(certs)
}

fn client_verifier(
    ca: &Path,
    provider: Arc<CryptoProvider>,
) -> Result<Arc<dyn tokio_rustls::rustls::server::danger::ClientCertVerifier>, String> {
    let mut roots = RootCertStore::empty();
    for cert in certificates(ca)? {
        roots
            .add(cert)
            .map_err(|e| format!("{}: not a CA certificate: {e}", ca.display()))?;
    }
    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
        .build()
        .map_err(|e| format!("{}: {e}", ca.display()))
}
