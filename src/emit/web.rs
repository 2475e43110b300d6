//! The web view: one page, a style sheet and a small script, embedded in the binary and
//! served on the HTTP listener (`/`, `/assets/…`). The page reads the same JSON API a
//! viewer would (`api/v1/…`, relative, so it also works behind a path prefix), every
//! two seconds; it carries nothing secret and shows correlation ids and dimension values
//! exactly as the API returns them (masked when masking is on).

use axum::extract::Path;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};

const INDEX_HTML: &str = include_str!("web/index.html");
const APP_CSS: &str = include_str!("web/app.css");
const APP_JS: &str = include_str!("web/app.js");

/// Scripts and styles only from this origin, no inline code, no framing.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

fn page(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
            (header::CONTENT_SECURITY_POLICY, CSP),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "no-referrer"),
        ],
        body,
    )
        .into_response()
}

/// `/`: the page.
pub async fn index() -> Response {
    page("text/html; charset=utf-8", INDEX_HTML)
}

/// `/assets/{file}`: the style sheet and the script.
pub async fn asset(Path(file): Path<String>) -> Response {
    match file.as_str() {
        "app.css" => page("text/css; charset=utf-8", APP_CSS),
        "app.js" => page("text/javascript; charset=utf-8", APP_JS),
        _ => (StatusCode::NOT_FOUND, "no such asset").into_response(),
    }
}
