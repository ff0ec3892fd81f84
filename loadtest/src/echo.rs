//! The transport floor: the Rerank API over the same tonic stack and message sizes, with
//! no model. It answers the first `top_k` candidates in request order.

use std::net::SocketAddr;

use degre::api::v1::{self, reranker_server::Reranker, reranker_server::RerankerServer};
use tonic::{Request, Response, Status};

struct Echo;

#[tonic::async_trait]
impl Reranker for Echo {
    async fn rerank(
        &self,
        request: Request<v1::RerankRequest>,
    ) -> Result<Response<v1::RerankResponse>, Status> {
        let request = request.into_inner();
        let k = match request.top_k as usize {
            0 => request.candidates.len(),
            k => k.min(request.candidates.len()),
        };
        let items = request
            .candidates
            .into_iter()
            .take(k)
            .enumerate()
            .map(|(i, c)| v1::RankedItem {
                item_id: c.item_id,
                candidate_index: i as u32,
                score: 0.0,
                alternatives: Vec::new(),
                masked_by: Vec::new(),
            })
            .collect();
        Ok(Response::new(v1::RerankResponse {
            items,
            model_name: "echo".into(),
            model_version: 0,
            unfilled: String::new(),
        }))
    }

    /// No model: the load tester then sizes its requests from a manifest.
    async fn get_model_info(
        &self,
        _: Request<v1::GetModelInfoRequest>,
    ) -> Result<Response<v1::ModelInfo>, Status> {
        Err(Status::unimplemented("the echo server serves no model"))
    }
}

pub async fn serve(addr: SocketAddr) -> anyhow::Result<()> {
    eprintln!("echo server on {addr}");
    tonic::transport::Server::builder()
        .tcp_nodelay(true)
        .add_service(RerankerServer::new(Echo).max_decoding_message_size(64 << 20))
        .serve_with_shutdown(addr, async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}
