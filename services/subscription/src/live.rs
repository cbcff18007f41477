//! The live view: what this replica of the subscription service is doing right now — events
//! read from the bus per issuer, deliveries per aggregator, connected streams — as a page that
//! refreshes itself every second (`GET /live`) and as JSON (`GET /live.json`).
//!
//! The figures are this process's since it started (one replica's share behind a load
//! balancer; the metrics aggregate across replicas). The page computes rates from successive
//! snapshots in the browser, so the server keeps no history.

use axum::Router;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use cardlink_serving::html::{self, Nav};
use serde_json::json;

use crate::hub::Hub;
use crate::metrics::DeliveryCounts;

#[derive(Clone, Debug)]
pub struct LiveState {
    pub hub: Hub,
    pub deliveries: DeliveryCounts,
}

/// The figures as JSON: `{events_in: {issuer: n}, deliveries: {aggregator: n},
/// streams: {aggregator: n}, at: RFC 3339}`.
pub fn snapshot(state: &LiveState) -> serde_json::Value {
    let map =
        |pairs: Vec<(String, u64)>| pairs.into_iter().map(|(k, v)| (k, json!(v))).collect::<serde_json::Map<_, _>>();
    let mut streams = state.hub.streams().streams_per_aggregator();
    streams.sort();
    json!({
        "at": chrono::Utc::now().to_rfc3339(),
        "events_in": map(state.hub.streams().events_in()),
        "deliveries": map(state.deliveries.snapshot()),
        "streams": map(streams.into_iter().map(|(a, n)| (a, n as u64)).collect()),
    })
}

pub fn router(state: LiveState) -> Router {
    Router::new()
        .route("/live", get(|| async { html::page("ライブビュー", Nav::Live, BODY) }))
        .route(
            "/live.json",
            get(|State(state): State<LiveState>| async move {
                ([(header::CACHE_CONTROL, "no-store")], axum::Json(snapshot(&state))).into_response()
            }),
        )
        .with_state(state)
}

/// The page's body: three tables the script fills from `/live.json` every second.
const BODY: &str = r#"<h1>ライブビュー</h1><p>このレプリカが今処理しているもの（1秒ごとに更新）。<span id="at" class="muted"></span></p>
<h2>バスから読んだイベント（カード会社別）</h2><table id="events-in"><tr><th>カード会社</th><th class="num">累計</th><th class="num">件/秒</th></tr></table>
<h2>配信（事業者別）</h2><table id="deliveries"><tr><th>事業者</th><th class="num">累計</th><th class="num">件/秒</th></tr></table>
<h2>接続中のストリーム</h2><table id="streams"><tr><th>事業者</th><th class="num">本数</th></tr></table>
<script>
let last = null;
function fill(id, now, prev, seconds, rate) {
  const table = document.getElementById(id);
  while (table.rows.length > 1) table.deleteRow(1);
  for (const [key, n] of Object.entries(now).sort()) {
    const row = table.insertRow();
    row.insertCell().textContent = key;
    const total = row.insertCell(); total.className = "num"; total.textContent = n.toLocaleString();
    if (rate) {
      const r = row.insertCell(); r.className = "num";
      r.textContent = prev && seconds > 0 ? ((n - (prev[key] || 0)) / seconds).toFixed(1) : "–";
    }
  }
}
async function tick() {
  try {
    const now = await (await fetch("/live.json", {cache: "no-store"})).json();
    const seconds = last ? (Date.parse(now.at) - Date.parse(last.at)) / 1000 : 0;
    fill("events-in", now.events_in, last && last.events_in, seconds, true);
    fill("deliveries", now.deliveries, last && last.deliveries, seconds, true);
    fill("streams", now.streams, null, 0, false);
    document.getElementById("at").textContent = "更新: " + new Date(now.at).toLocaleTimeString("ja-JP");
    last = now;
  } catch (e) { document.getElementById("at").textContent = "接続できません"; }
}
tick(); setInterval(tick, 1000);
</script>"#;
