//! Every way an admin API call can fail, and the one place each becomes a status.

use super::{MAX_BODY, json};
use crate::config::FieldError;
use crate::control::{ControlError, FieldErrorJson};
use crate::rollout::driver::RolloutError;
use crate::rollout::machine::{Phase, Verb};
use bytes::Bytes;
use http::{Method, Response, StatusCode, header};
use http_body_util::Full;
use serde::Serialize;
use std::fmt;

/// Why an admin API call changed nothing; answered as `{"error": "...", "errors": [...]}`.
#[derive(Debug)]
pub enum AdminError {
    /// The control plane refused the call.
    Control(ControlError),
    /// A request body or query parameter that cannot be read; the field is `body` or the
    /// parameter's name.
    BadInput(FieldError),
    /// A token is configured and the request does not carry it.
    Unauthorized,
    /// No token is configured and a state-changing call comes from a non-loopback peer.
    Forbidden,
    /// Nothing is served at this path.
    NoEndpoint(String),
    /// The path exists, not with this method.
    MethodNotAllowed { method: Method, path: String },
    /// The request body is larger than [`MAX_BODY`].
    BodyTooLarge,
    /// A rollout verb that does not apply, or a route without a rollout.
    Rollout(RolloutError),
    /// Weights set by hand on a route a rollout drives, without `?force=true`.
    RolloutDrivesWeights { route: String, phase: Phase },
    /// A call that changes one proxy's traffic, made to a fleet controller (which serves none).
    OnController(String),
}

impl From<RolloutError> for AdminError {
    fn from(e: RolloutError) -> Self {
        AdminError::Rollout(e)
    }
}

impl From<ControlError> for AdminError {
    fn from(e: ControlError) -> Self {
        AdminError::Control(e)
    }
}

impl AdminError {
    /// The status of every failure. No catch-all arm: a new error does not compile until
    /// it has a status here.
    pub fn status(&self) -> StatusCode {
        match self {
            AdminError::Control(e) => match e {
                ControlError::UnknownRoute(_)
                | ControlError::NoRuntimeRule { .. }
                | ControlError::NoRuntimeMirror { .. } => StatusCode::NOT_FOUND,
                ControlError::UnknownVersion { .. }
                | ControlError::PrimaryWeight { .. }
                | ControlError::BadWeight { .. }
                | ControlError::Invalid(_) => StatusCode::BAD_REQUEST,
                ControlError::ReloadRejected { .. } => StatusCode::UNPROCESSABLE_ENTITY,
                ControlError::NoConfigFile => StatusCode::CONFLICT,
                ControlError::BadRange(_) => StatusCode::BAD_REQUEST,
                ControlError::LayerRefused(_) | ControlError::Owned { .. } => StatusCode::CONFLICT,
                ControlError::NoLayer(_) => StatusCode::NOT_FOUND,
            },
            AdminError::BadInput(_) => StatusCode::BAD_REQUEST,
            AdminError::Unauthorized => StatusCode::UNAUTHORIZED,
            AdminError::Forbidden => StatusCode::FORBIDDEN,
            AdminError::NoEndpoint(_) => StatusCode::NOT_FOUND,
            AdminError::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            AdminError::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            AdminError::Rollout(e) => match e {
                RolloutError::NoRollout(_) => StatusCode::NOT_FOUND,
                RolloutError::NotApplicable { .. } => StatusCode::CONFLICT,
                RolloutError::NoStep { .. } => StatusCode::BAD_REQUEST,
                RolloutError::NeedsStep => StatusCode::CONFLICT,
            },
            AdminError::RolloutDrivesWeights { .. } => StatusCode::CONFLICT,
            AdminError::OnController(_) => StatusCode::CONFLICT,
        }
    }

    /// The verbs that do apply, for a 409 on a rollout verb.
    fn verbs(&self) -> Option<Vec<Verb>> {
        match self {
            AdminError::Rollout(RolloutError::NotApplicable { allowed, .. }) => {
                Some(allowed.clone())
            }
            _ => None,
        }
    }

    /// The fields at fault, for `errors`.
    fn fields(&self) -> Vec<FieldError> {
        match self {
            AdminError::Control(e) => e.fields(),
            AdminError::BadInput(f) => vec![f.clone()],
            AdminError::Unauthorized
            | AdminError::Forbidden
            | AdminError::NoEndpoint(_)
            | AdminError::MethodNotAllowed { .. }
            | AdminError::BodyTooLarge
            | AdminError::Rollout(_)
            | AdminError::RolloutDrivesWeights { .. }
            | AdminError::OnController(_) => Vec::new(),
        }
    }

    /// The generation still in force after a rejected reload, which its answer reports.
    fn kept_generation(&self) -> Option<u64> {
        match self {
            AdminError::Control(ControlError::ReloadRejected { generation, .. }) => {
                Some(*generation)
            }
            _ => None,
        }
    }

    pub fn into_response(self) -> Response<Full<Bytes>> {
        let status = self.status();
        let kept = self.kept_generation();
        let body = ErrorBody {
            verbs: self.verbs(),
            result: kept.map(|_| "failure"),
            generation: kept,
            error: self.to_string(),
            errors: self.fields().iter().map(FieldErrorJson::from).collect(),
        };
        let mut r = json::response(status, &body);
        if status == StatusCode::UNAUTHORIZED {
            // A 401 names the scheme it wants (RFC 9110 §11.6.1).
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
        }
        r
    }
}

impl fmt::Display for AdminError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AdminError::Control(e) => e.fmt(f),
            AdminError::BadInput(e) => e.fmt(f),
            AdminError::Unauthorized => {
                f.write_str("this admin API requires `Authorization: Bearer <token>`")
            }
            AdminError::Forbidden => f.write_str(
                "state-changing admin calls are accepted only from loopback unless admin.token is set",
            ),
            AdminError::NoEndpoint(path) => write!(f, "no admin endpoint {path}"),
            AdminError::MethodNotAllowed { method, path } => {
                write!(f, "{method} is not allowed on {path}")
            }
            AdminError::BodyTooLarge => write!(f, "request body larger than {MAX_BODY} bytes"),
            AdminError::Rollout(e) => e.fmt(f),
            AdminError::RolloutDrivesWeights { route, phase } => write!(
                f,
                "route `{route}` has a rollout that is {}: weights set by hand would fight it; add ?force=true to set them anyway (the rollout pauses, `resume` gives them back)",
                serde_json::to_value(phase).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default()
            ),
            AdminError::OnController(path) => write!(
                f,
                "{path}: this is a fleet controller, it serves no traffic of its own; drive the fleet with the rollout verbs here, or call a replica's admin API"
            ),
        }
    }
}

impl std::error::Error for AdminError {}

/// The answer to a failed call. `result` and `generation` only for a rejected reload.
#[derive(Serialize)]
struct ErrorBody {
    #[serde(skip_serializing_if = "Option::is_none")]
    result: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    generation: Option<u64>,
    error: String,
    errors: Vec<FieldErrorJson>,
    /// For a verb that does not apply: the ones that do.
    #[serde(skip_serializing_if = "Option::is_none")]
    verbs: Option<Vec<Verb>>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    fn answer(e: AdminError) -> (StatusCode, Option<String>, String) {
        let r = e.into_response();
        let auth = r
            .headers()
            .get(header::WWW_AUTHENTICATE)
            .map(|v| v.to_str().unwrap().to_string());
        let status = r.status();
        // A `Full` body is ready at once; a current-thread runtime is enough to collect it.
        let body = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(r.into_body().collect())
            .unwrap()
            .to_bytes();
        (status, auth, String::from_utf8(body.to_vec()).unwrap())
    }

    #[test]
    fn admin_only_errors_answer_as_documented() {
        let plain = |msg: &str| format!("{{\n  \"error\": \"{msg}\",\n  \"errors\": []\n}}\n");
        assert_eq!(
            answer(AdminError::Unauthorized),
            (
                StatusCode::UNAUTHORIZED,
                Some("Bearer".to_string()),
                plain("this admin API requires `Authorization: Bearer <token>`")
            )
        );
        assert_eq!(
            answer(AdminError::Forbidden),
            (
                StatusCode::FORBIDDEN,
                None,
                plain(
                    "state-changing admin calls are accepted only from loopback unless admin.token is set"
                )
            )
        );
        assert_eq!(
            answer(AdminError::BodyTooLarge),
            (
                StatusCode::PAYLOAD_TOO_LARGE,
                None,
                plain("request body larger than 65536 bytes")
            )
        );
        assert_eq!(
            answer(AdminError::MethodNotAllowed {
                method: Method::PATCH,
                path: "/api/v1/reload".into()
            }),
            (
                StatusCode::METHOD_NOT_ALLOWED,
                None,
                plain("PATCH is not allowed on /api/v1/reload")
            )
        );
        assert_eq!(
            answer(AdminError::NoEndpoint("/x".into())),
            (StatusCode::NOT_FOUND, None, plain("no admin endpoint /x"))
        );
        assert_eq!(
            answer(ControlError::NoConfigFile.into()),
            (
                StatusCode::CONFLICT,
                None,
                plain("canaryd was started without a config file; nothing to reload")
            )
        );
    }

    #[test]
    fn a_rejected_reload_reports_the_generation_kept() {
        let error = crate::config::ConfigError {
            errors: vec![FieldError {
                field: "routes[0].name".into(),
                message: "is empty".into(),
            }],
        };
        let (status, _, body) = answer(
            ControlError::ReloadRejected {
                what: crate::control::Rejected::Config,
                generation: 7,
                error,
            }
            .into(),
        );
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(
            body,
            r#"{
  "error": "config rejected, the running one is kept: routes[0].name: is empty",
  "errors": [
    {
      "field": "routes[0].name",
      "message": "is empty"
    }
  ],
  "generation": 7,
  "result": "failure"
}
"#
        );
    }
}
