//! `GET /v1/models`: what the online pool offers, and the model choice for a request.

use crate::error::ApiError;
use crate::state::AppState;
use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use proto::{ErrorKind, ModelInfo};
use serde::Serialize;
use std::collections::BTreeMap;
use utoipa::ToSchema;

/// Routes.
pub fn router() -> Router<AppState> {
    Router::new().route("/v1/models", get(list))
}

/// A model offered by at least one healthy node.
#[derive(Serialize, ToSchema, Clone)]
pub struct Model {
    /// Id to pass as `model`.
    pub id: String,
    /// Features, e.g. `voice-cloning`.
    pub features: Vec<String>,
    /// Longest text (script with cloning transcripts, in its text tokens) one of its nodes
    /// reads: requests are routed to nodes whose window fits them.
    pub max_input_chars: u32,
    /// Most frames one of its nodes generates, routed the same way.
    pub max_new_tokens: u32,
    /// Most decoder frames one of its nodes holds per request, the voice prompt's (one per 512
    /// samples) and the new ones together, routed the same way.
    pub max_frames: u32,
    /// Language codes a transcription model takes (those all its nodes take).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub languages: Vec<String>,
    /// Healthy nodes serving it.
    pub nodes: u32,
    /// What each of those nodes advertised, to find one that can take a request.
    #[serde(skip)]
    pub offers: Vec<ModelInfo>,
}

/// The list.
#[derive(Serialize, ToSchema)]
pub struct ModelList {
    /// Models, by id.
    pub data: Vec<Model>,
}

/// Models of the healthy, non-draining nodes of every replica; the least loaded node's come first.
pub async fn online_models(state: &AppState) -> Result<Vec<Model>, ApiError> {
    let fresh = state.config.heartbeat_timeout().as_millis() as i64;
    let mut models: BTreeMap<String, (usize, Model)> = BTreeMap::new();
    for (rank, node) in state.db.available_nodes(fresh).await?.iter().enumerate() {
        for m in node.models() {
            let entry = models.entry(m.id.clone()).or_insert_with(|| {
                let model = Model {
                    id: m.id.clone(),
                    features: Vec::new(),
                    max_input_chars: 0,
                    max_new_tokens: 0,
                    max_frames: 0,
                    languages: m.languages.clone(),
                    nodes: 0,
                    offers: Vec::new(),
                };
                (rank, model)
            });
            let model = &mut entry.1;
            model.nodes += 1;
            model.max_input_chars = model.max_input_chars.max(m.max_input_chars);
            model.max_new_tokens = model.max_new_tokens.max(m.max_new_tokens);
            model.max_frames = model.max_frames.max(m.max_frames);
            model.languages.retain(|l| m.languages.contains(l));
            for f in &m.features {
                if !model.features.contains(f) {
                    model.features.push(f.clone());
                }
            }
            model.offers.push(m);
        }
    }
    let mut list: Vec<(usize, Model)> = models.into_values().collect();
    list.sort_by_key(|(rank, _)| *rank);
    Ok(list.into_iter().map(|(_, m)| m).collect())
}

/// Picks the model for a request needing `feature`: the named one if it is online with the
/// feature, else the least loaded node's. A named model that some node once offered but none
/// serves now is `no_provider` (the client may retry); one never offered is `unknown_model`.
pub async fn choose(
    state: &AppState,
    requested: Option<&str>,
    feature: &str,
) -> Result<Model, ApiError> {
    let mut offering: Vec<Model> = online_models(state)
        .await?
        .into_iter()
        .filter(|m| m.features.iter().any(|f| f == feature))
        .collect();
    let Some(name) = requested else {
        if offering.is_empty() {
            let msg = format!("no online provider offers `{feature}`; try again later");
            return Err(ApiError::new(ErrorKind::NoProvider, msg));
        }
        return Ok(offering.swap_remove(0));
    };
    if let Some(i) = offering.iter().position(|m| m.id == name) {
        return Ok(offering.swap_remove(i));
    }
    if state.db.was_offered(name, feature).await? {
        let msg = format!("no online provider serves `{name}` now; try again later");
        return Err(ApiError::new(ErrorKind::NoProvider, msg));
    }
    let ids: Vec<&str> = offering.iter().map(|m| m.id.as_str()).collect();
    let msg = format!(
        "`model` must name a model with `{feature}` (online now: {}); got \"{name}\"",
        if ids.is_empty() { "none".to_owned() } else { ids.join(", ") }
    );
    Err(ApiError::new(ErrorKind::UnknownModel, msg))
}

/// Lists the models the online pool offers.
#[utoipa::path(get, path = "/v1/models", tag = "models", operation_id = "list_models", responses((status = 200, body = ModelList)))]
pub async fn list(State(state): State<AppState>) -> Result<Json<ModelList>, ApiError> {
    let mut data = online_models(&state).await?;
    data.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(Json(ModelList { data }))
}
