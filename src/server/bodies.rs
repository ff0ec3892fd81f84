//! One budget for the request bytes the whole server holds before they are decoded. A
//! stream's body is buffered until its message is complete; the stream and connection
//! limits bound that per connection, and this bounds it across connections, so clients
//! that send many large or slow bodies at once get RESOURCE_EXHAUSTED instead of taking
//! the process's memory. The bytes count from arrival until the body is dropped (once its
//! message is decoded, or the stream ends).

use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use http_body::{Body, Frame, SizeHint};
use tonic::codegen::Bytes;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Request bytes held by every stream at once, at most `max`.
#[derive(Clone)]
pub struct BodyBudget {
    held: Arc<AtomicUsize>,
    max: usize,
}

impl BodyBudget {
    pub fn new(max: usize) -> BodyBudget {
        BodyBudget {
            held: Arc::default(),
            max,
        }
    }

    /// `request` with its body counted against the budget.
    pub fn count<B>(&self, request: http::Request<B>) -> http::Request<tonic::body::Body>
    where
        B: Body<Data = Bytes> + Unpin + Send + 'static,
        B::Error: Into<BoxError>,
    {
        let budget = self.clone();
        request.map(|body| {
            tonic::body::Body::new(Counted {
                body,
                budget,
                held: 0,
            })
        })
    }

    fn take(&self, bytes: usize) -> bool {
        let before = self.held.fetch_add(bytes, Ordering::AcqRel);
        if before + bytes <= self.max {
            return true;
        }
        self.held.fetch_sub(bytes, Ordering::AcqRel);
        false
    }
}

struct Counted<B> {
    body: B,
    budget: BodyBudget,
    /// Bytes of this body counted so far, given back when it is dropped.
    held: usize,
}

impl<B> Drop for Counted<B> {
    fn drop(&mut self) {
        self.budget.held.fetch_sub(self.held, Ordering::AcqRel);
    }
}

impl<B> Body for Counted<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        let frame = match Pin::new(&mut this.body).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => frame,
            Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e.into()))),
            Poll::Ready(None) => return Poll::Ready(None),
            Poll::Pending => return Poll::Pending,
        };
        let bytes = frame.data_ref().map_or(0, Bytes::len);
        if !this.budget.take(bytes) {
            let status = tonic::Status::resource_exhausted(format!(
                "the server already holds {} bytes of request bodies (--max-buffered-request-bytes)",
                this.budget.max
            ));
            return Poll::Ready(Some(Err(status.into())));
        }
        this.held += bytes;
        Poll::Ready(Some(Ok(frame)))
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
