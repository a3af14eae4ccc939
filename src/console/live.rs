//! The live cohort view for the browser: the API's own stream
//! (`GET /v1/courses/{id}/live`, the same release code, live rule and audit),
//! relayed event by event. Each message is the API's released view without its
//! `disclosure` summary (thresholds and audit figures the page does not show),
//! so nothing but released cells reaches the browser.

use axum::extract::{Path, Query, State};
use axum::http::{Method, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use serde::Deserialize;
use serde_json::Value;
use std::convert::Infallible;

use super::dispatch::{enc, raw};
use super::viewer::Viewer;
use super::Console;

/// How often an open stream checks that its session still lives.
const SESSION_CHECK: std::time::Duration = std::time::Duration::from_secs(30);

#[derive(Deserialize)]
pub struct LiveQuery {
    minutes: Option<u32>,
    from: Option<String>,
    to: Option<String>,
}

/// One `event:`/`data:` block of a Server-Sent Events stream.
pub fn parse_block(block: &str) -> Option<(String, String)> {
    let mut event = "message".to_string();
    let mut data = Vec::new();
    for line in block.lines() {
        if let Some(e) = line.strip_prefix("event:") {
            event = e.trim().to_owned();
        } else if let Some(d) = line.strip_prefix("data:") {
            data.push(d.strip_prefix(' ').unwrap_or(d));
        }
    }
    (!data.is_empty()).then(|| (event, data.join("\n")))
}

/// What the browser gets of one API message.
pub fn for_browser(event: &str, data: &str) -> Option<Event> {
    match event {
        "funnel" | "engagement" => {
            let mut v: Value = serde_json::from_str(data).ok()?;
            if let Some(o) = v.as_object_mut() {
                o.remove("disclosure");
            }
            Event::default().event(event).json_data(&v).ok()
        }
        "error" => {
            Some(Event::default().event("error").data(data.chars().filter(|c| c.is_ascii_alphanumeric() || *c == '_').collect::<String>()))
        }
        _ => None,
    }
}

pub async fn relay(State(st): State<Console>, v: Viewer, Path(course): Path<String>, Query(q): Query<LiveQuery>) -> Response {
    let mut uri = format!("/v1/courses/{}/live?minutes={}", enc(&course), q.minutes.unwrap_or(60));
    for (k, val) in [("from", &q.from), ("to", &q.to)] {
        if let Some(x) = val.as_deref().filter(|s| !s.is_empty()) {
            uri += &format!("&{k}={}", enc(x));
        }
    }
    let resp = raw(&st.api, &v.principal, Method::GET, &uri, None).await;
    if resp.status() != StatusCode::OK {
        return resp.status().into_response();
    }
    let body = resp.into_body().into_data_stream();
    // The stream lives as long as the session: checked (and kept alive, the
    // viewer is watching) every SESSION_CHECK; a signed-out or expired session ends it.
    let session = (st.app.pool.clone(), v.session_id.clone(), st.app.console.idle, std::time::Instant::now());
    let events = futures::stream::unfold((body, Vec::<u8>::new(), Some(session)), |(mut body, mut buf, session)| async move {
        let mut session = session?;
        loop {
            if session.3.elapsed() >= SESSION_CHECK {
                match crate::auth::session::touch(&session.0, &session.1, session.2).await {
                    Ok(Some(_)) => session.3 = std::time::Instant::now(),
                    _ => return Some((Ok(Event::default().event("error").data("session_ended")), (body, buf, None))),
                }
            }
            if let Some(i) = buf.windows(2).position(|w| w == b"\n\n") {
                let block: Vec<u8> = buf.drain(..i + 2).collect();
                if let Some(ev) = parse_block(&String::from_utf8_lossy(&block)).and_then(|(e, d)| for_browser(&e, &d)) {
                    return Some((Ok::<Event, Infallible>(ev), (body, buf, Some(session))));
                }
                continue;
            }
            match body.next().await {
                Some(Ok(chunk)) => buf.extend_from_slice(&chunk),
                _ => return None,
            }
        }
    });
    Sse::new(events).keep_alive(KeepAlive::default()).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_blocks_and_drops_the_disclosure_summary() {
        let (e, d) = parse_block("event: funnel\ndata: {\"total\":{\"enrolled\":{\"value\":null,\"suppressed\":\"small_cell\"}},\"disclosure\":{\"information_loss\":{\"complementary_value\":7}}}\n\n").unwrap();
        assert_eq!(e, "funnel");
        let ev = for_browser(&e, &d).unwrap();
        let text = format!("{ev:?}");
        assert!(!text.contains("complementary_value"), "{text}");
        assert!(parse_block(":keep-alive\n\n").is_none());
        assert!(for_browser("other", "{}").is_none());
    }
}
