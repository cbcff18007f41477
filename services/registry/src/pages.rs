//! The registry's public pages: what the seed report asks card companies to disclose, and the
//! industry's progress toward its goal. Nobody signs in to read them.
//!
//! - `GET /transparency`: every card company and the aggregators (電子決済等代行業者) it shares
//!   card data with through cardlink — name, registration number, the data it may receive.
//! - `GET /goal`: the share of 取扱高 held by card companies that publish live and are connected
//!   to at least one aggregator, against the 90% target, with the per-issuer breakdown; and the
//!   same as JSON (`GET /goal.json`) for dashboards.
//!
//! Both read the registry view and the observed publishing activity, the same sources as
//! `Registry.ListConnections` and `Registry.GetGoal`.

use std::fmt::Write as _;

use axum::Router;
use axum::extract::State;
use axum::http::header;
use axum::response::{Html, IntoResponse};
use axum::routing::get;
use cardlink_events::registry::ConnectionStatus;
use cardlink_serving::html::{self, Nav, esc, yen_large};
use cardlink_views::follow::Followed;
use cardlink_views::registry::RegistryView;
use chrono::{TimeDelta, Utc};
use serde_json::json;

use crate::goal::{self, Goal, PublishingActivity};

/// How often the goal page reloads itself.
pub const GOAL_REFRESH_SECS: u32 = 10;

#[derive(Clone, Debug)]
pub struct PageState {
    pub view: Followed<RegistryView>,
    pub activity: PublishingActivity,
}

pub fn router(state: PageState) -> Router {
    Router::new()
        .route("/transparency", get(transparency))
        .route("/goal", get(goal_page))
        .route("/goal.json", get(goal_json))
        .with_state(state)
}

fn current_goal(state: &PageState) -> Goal {
    state.view.read(|v| goal::compute(v, &state.activity, Utc::now()))
}

async fn transparency(State(state): State<PageState>) -> Html<String> {
    let body = state.view.read(|v| {
        let mut issuers: Vec<_> = v.issuers().collect();
        issuers.sort_by(|a, b| b.annual_volume_jpy.cmp(&a.annual_volume_jpy).then_with(|| a.issuer_id.cmp(&b.issuer_id)));
        let mut out = String::from(
            "<h1>カード会社のデータ提供先</h1>\
             <p>cardlink につながるカード会社が、会員の同意にもとづいてカード情報を API で提供している\
             電子決済等代行業者の一覧です。提供は会員が同意した範囲に限られ、会員はいつでも取り消せます（<a href=\"/member\">会員ページ</a>）。</p>",
        );
        for issuer in issuers {
            let mut connections: Vec<_> = v
                .connections()
                .filter(|c| c.issuer_id == issuer.issuer_id && v.is_connected(&c.issuer_id, &c.aggregator_id))
                .collect();
            connections.sort_by(|a, b| a.aggregator_id.cmp(&b.aggregator_id));
            let _ = write!(
                out,
                "<section class=\"issuer\" data-issuer=\"{}\"><h2>{}</h2>",
                esc(&issuer.issuer_id),
                esc(&issuer.name)
            );
            if connections.is_empty() {
                out.push_str("<p class=\"muted\">API による提供先はまだありません。</p></section>");
                continue;
            }
            out.push_str("<table><tr><th>提供先</th><th>登録番号</th><th>提供できる情報</th><th>連絡先</th></tr>");
            for c in connections {
                let (name, number, contact) = v
                    .aggregator(&c.aggregator_id)
                    .map(|a| (a.name.as_str(), a.registration_number.as_str(), a.contact.as_str()))
                    .unwrap_or((c.aggregator_id.as_str(), "", ""));
                let scopes: Vec<&str> = c.scopes.iter().map(|s| s.label_ja()).collect();
                let _ = write!(
                    out,
                    "<tr class=\"connection\"><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                    esc(name),
                    esc(number),
                    esc(&scopes.join("、")),
                    esc(contact)
                );
            }
            out.push_str("</table></section>");
        }
        let suspended = v.connections().filter(|c| c.status == ConnectionStatus::Suspended).count();
        if suspended > 0 {
            let _ = write!(out, "<p class=\"muted\">停止中の接続: {suspended} 件（上の一覧には含みません）。</p>");
        }
        out
    });
    html::page("データ提供先の公表", Nav::Transparency, &body)
}

fn percent(share: f64) -> String {
    format!("{:.1}%", share * 100.0)
}

async fn goal_page(State(state): State<PageState>) -> Html<String> {
    let g = current_goal(&state);
    let now = Utc::now();
    let mut rows = String::new();
    for i in &g.issuers {
        let last = match i.last_published_at {
            Some(t) => {
                let age = now - t;
                if age < TimeDelta::minutes(1) {
                    "1分以内".to_owned()
                } else {
                    (t + TimeDelta::hours(9)).format("%Y-%m-%d %H:%M").to_string()
                }
            }
            None => "—".to_owned(),
        };
        let share_of_total =
            if g.total_volume_jpy > 0 { i.annual_volume_jpy as f64 / g.total_volume_jpy as f64 } else { 0.0 };
        let _ = write!(
            rows,
            "<tr class=\"issuer\" data-issuer=\"{}\"><td>{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td>\
             <td>{}</td><td>{}</td><td class=\"num\">{}</td><td>{}</td></tr>",
            esc(&i.issuer_id),
            esc(&i.name),
            yen_large(i.annual_volume_jpy),
            percent(share_of_total),
            if i.publishing_live {
                "<span class=\"yes\">配信中</span>"
            } else {
                "<span class=\"no\">未配信</span>"
            },
            esc(&last),
            i.active_connections,
            if i.counts { "<span class=\"yes\">算入</span>" } else { "<span class=\"no\">—</span>" },
        );
    }
    let filled = (g.share * 100.0).clamp(0.0, 100.0);
    let target = goal::TARGET_SHARE * 100.0;
    let body = format!(
        "<h1>目標の進捗: 取扱高の {target:.0}% を API 連携へ（2028年度末）</h1>\
         <p>会員の ID・パスワードによるスクレイピングをやめ、API で電子決済等代行業者につながったカード会社の取扱高の割合です。\
         算入されるのは、cardlink にイベントを実際に配信していて（直近 {live} 日）、自社以外の事業者との接続が 1 件以上有効なカード会社です。</p>\
         <div class=\"box\"><div class=\"figure\" id=\"share\">{share}</div>\
         <div class=\"bar\" title=\"目標 {target:.0}%\"><div class=\"fill\" style=\"width:{filled:.1}%\"></div>\
         <div class=\"target\" style=\"left:{target:.1}%\"></div></div>\
         <p>API 連携済み <b id=\"connected\">{connected}</b> ／ 登録カード会社の取扱高合計 <b id=\"total\">{total}</b>　\
         <span class=\"muted\">（目標 {target:.0}% まで {gap}）</span></p></div>\
         <h2>カード会社別</h2><table id=\"issuers\"><tr><th>カード会社</th><th class=\"num\">年間取扱高</th><th class=\"num\">構成比</th>\
         <th>配信</th><th>最終配信 (日本時間)</th><th class=\"num\">接続先</th><th>目標に算入</th></tr>{rows}</table>\
         <p class=\"muted\">{refresh} 秒ごとに更新。API: <code>cardlink.v1.Registry/GetGoal</code>、JSON: <a href=\"/goal.json\">/goal.json</a>、\
         メトリクス: <code>cardlink.goal.share</code>。</p>",
        live = goal::LIVE_WINDOW.num_days(),
        share = percent(g.share),
        connected = yen_large(g.connected_volume_jpy),
        total = yen_large(g.total_volume_jpy),
        gap = if g.share >= goal::TARGET_SHARE {
            "達成".to_owned()
        } else {
            format!("あと {:.1} ポイント", (goal::TARGET_SHARE - g.share) * 100.0)
        },
        refresh = GOAL_REFRESH_SECS,
    );
    html::page_with_refresh("目標の進捗", Nav::Goal, &body, Some(GOAL_REFRESH_SECS))
}

async fn goal_json(State(state): State<PageState>) -> impl IntoResponse {
    let g = current_goal(&state);
    let issuers: Vec<_> = g
        .issuers
        .iter()
        .map(|i| {
            json!({
                "issuer_id": i.issuer_id,
                "name": i.name,
                "annual_volume_jpy": i.annual_volume_jpy,
                "publishing_live": i.publishing_live,
                "last_published_at": i.last_published_at.map(|t| t.to_rfc3339()),
                "active_connections": i.active_connections,
                "counts_toward_goal": i.counts,
            })
        })
        .collect();
    (
        [(header::CACHE_CONTROL, "no-store")],
        axum::Json(json!({
            "share": g.share,
            "target_share": goal::TARGET_SHARE,
            "total_volume_jpy": g.total_volume_jpy,
            "connected_volume_jpy": g.connected_volume_jpy,
            "issuers": issuers,
        })),
    )
}
