//! Counts every answer of the Rerank RPC as the client sees it, outside tonic's codec: a
//! body that does not decode, a deadline tonic enforces, a stream the client resets, all
//! land in `degre_requests_total` with their gRPC code, next to the service's own answers.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http_body::{Body, Frame};
use tonic::Code;

use super::deadline;
use super::queue::ComputeQueue;
use crate::telemetry;

const RERANK_PATH: &str = "/degre.v1.Reranker/Rerank";

/// The model version that answered, set by the service on its response so that the
/// answer's metrics carry it.
#[derive(Debug, Clone, Copy)]
pub struct ServedBy(pub u64);

/// The tower layer: wraps every service of the server; only Rerank calls are counted.
/// `in_flight` holds the Rerank calls not answered yet (a drain waits for these only). One
/// more than `max_in_flight`, or one the compute queue would hold too long, is refused
/// here, before its body is read or decoded; an admitted one carries its queue ticket to
/// the service in its extensions.
#[derive(Clone)]
pub struct CountAnswers {
    pub in_flight: Arc<AtomicUsize>,
    admission: Admission,
}

#[derive(Clone)]
struct Admission {
    max_in_flight: usize,
    queue: Arc<ComputeQueue>,
    /// The server's own limit on a request, for requests whose client sets no deadline.
    request_timeout: Duration,
}

impl CountAnswers {
    pub fn new(
        max_in_flight: usize,
        queue: Arc<ComputeQueue>,
        request_timeout: Duration,
    ) -> CountAnswers {
        CountAnswers {
            in_flight: Arc::default(),
            admission: Admission {
                max_in_flight,
                queue,
                request_timeout,
            },
        }
    }
}

impl<S> tower::Layer<S> for CountAnswers {
    type Service = Counted<S>;
    fn layer(&self, inner: S) -> Counted<S> {
        Counted {
            inner,
            in_flight: self.in_flight.clone(),
            admission: self.admission.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Counted<S> {
    inner: S,
    in_flight: Arc<AtomicUsize>,
    admission: Admission,
}

impl<S, ReqBody> tower::Service<http::Request<ReqBody>> for Counted<S>
where
    S: tower::Service<http::Request<ReqBody>, Response = http::Response<tonic::body::Body>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<ReqBody>) -> Self::Future {
        let counted = request.uri().path() == RERANK_PATH;
        let started = Instant::now();
        let max_in_flight = self.admission.max_in_flight;
        // Refused before anything is read: under overload a refusal costs no decode, and
        // the requests waiting to be polled stay few, so the admitted ones answer fast.
        if counted && self.in_flight.fetch_add(1, Ordering::AcqRel) >= max_in_flight {
            self.in_flight.fetch_sub(1, Ordering::AcqRel);
            telemetry::request_done(Code::ResourceExhausted, None, 0.0);
            let status = tonic::Status::resource_exhausted(format!(
                "server is overloaded: {max_in_flight} requests in flight (--max-in-flight)"
            ));
            let response = status.into_http();
            return Box::pin(async move { Ok(response) });
        }
        // Counted from now until answered, even if this future is dropped on the way.
        let mut answer = counted.then(|| Answer {
            started,
            version: None,
            done: false,
            in_flight: self.in_flight.clone(),
            gauge: Some(telemetry::InFlight::enter()),
        });
        if let Some(answer) = &mut answer {
            let client = request.extensions().get::<deadline::ClientTimeout>();
            let budget = deadline::budget(client.copied(), self.admission.request_timeout);
            match self.admission.queue.admit(started, budget) {
                Ok(ticket) => {
                    request.extensions_mut().insert(Arc::new(ticket));
                }
                Err(err) => {
                    answer.record(err.code());
                    let response = tonic::Status::from(err).into_http();
                    return Box::pin(async move { Ok(response) });
                }
            }
        }
        let future = self.inner.call(request);
        Box::pin(async move {
            let mut response = future.await?;
            let Some(mut answer) = answer else {
                return Ok(response);
            };
            no_message_is_the_clients_error(response.headers_mut());
            answer.version = response.extensions().get::<ServedBy>().map(|s| s.0);
            // A trailers-only answer (an error before any message) carries its status in
            // the headers; any other carries it in the trailers at the end of the body.
            if let Some(code) = grpc_status(response.headers()) {
                answer.record(code);
            }
            Ok(response.map(|body| tonic::body::Body::new(CountedBody { body, answer })))
        })
    }
}

/// One answer, recorded once: from its status, or as CANCELLED if the body is dropped
/// before a status was sent (the client reset the stream or went away).
struct Answer {
    started: Instant,
    /// The version that computed it; `None` for answers no model gave (errors).
    version: Option<u64>,
    done: bool,
    in_flight: Arc<AtomicUsize>,
    /// `degre_requests_in_flight`: the same count, for the scrape.
    gauge: Option<telemetry::InFlight>,
}

impl Answer {
    fn record(&mut self, code: Code) {
        if !self.done {
            self.done = true;
            self.in_flight.fetch_sub(1, Ordering::AcqRel);
            self.gauge = None;
            let seconds = self.started.elapsed().as_secs_f64();
            telemetry::request_done(code, self.version, seconds);
        }
    }
}

impl Drop for Answer {
    fn drop(&mut self) {
        self.record(Code::Cancelled);
    }
}

struct CountedBody {
    body: tonic::body::Body,
    answer: Answer,
}

impl Body for CountedBody {
    type Data = <tonic::body::Body as Body>::Data;
    type Error = <tonic::body::Body as Body>::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = &mut *self;
        let frame = Pin::new(&mut this.body).poll_frame(cx);
        match &frame {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(code) = frame.trailers_ref().and_then(grpc_status) {
                    this.answer.record(code);
                }
            }
            Poll::Ready(Some(Err(_))) => this.answer.record(Code::Internal),
            // A body that ends without trailers lost its status: the client sees an error.
            Poll::Ready(None) => this.answer.record(Code::Unknown),
            Poll::Pending => {}
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

/// tonic answers INTERNAL "Missing request message." to a stream that ended (or was reset
/// by its client) before a whole message arrived. Nothing failed in the server: it is the
/// client's doing, so it is answered and counted as INVALID_ARGUMENT, and an overload
/// whose clients give up does not look like a broken model.
fn no_message_is_the_clients_error(headers: &mut http::HeaderMap) {
    const MISSING: &str = "Missing%20request%20message.";
    let internal = grpc_status(headers) == Some(Code::Internal);
    if internal && headers.get("grpc-message").is_some_and(|m| m == MISSING) {
        headers.insert(
            "grpc-status",
            http::HeaderValue::from(Code::InvalidArgument as i32),
        );
        let message = "request%3A%20the%20stream%20ended%20before%20a%20whole%20message%20arrived";
        headers.insert("grpc-message", http::HeaderValue::from_static(message));
    }
}

fn grpc_status(headers: &http::HeaderMap) -> Option<Code> {
    let value = headers.get("grpc-status")?.to_str().ok()?;
    Some(Code::from_i32(value.parse().ok()?))
}
