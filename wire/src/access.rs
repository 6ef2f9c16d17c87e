//! Access control on the wire: roles, users, API tokens, node credentials
//! and the audit log (`/api/v1/users`, `/api/v1/tokens`, `/api/v1/nodes`,
//! `/api/v1/audit`), the name and password rules, and the duration syntax
//! (`30d`, `12h`) of `--expires` and `--since`.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// Times on the wire (UTC), named for crates without a chrono dependency.
pub type Timestamp = DateTime<Utc>;

/// What a user may do. Ordered: `Viewer < Developer < Admin`; a token's
/// scope can only narrow its user's role (the lower of the two applies).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Reads functions, deployments and crashes; changes nothing.
    Viewer,
    /// Deploys new functions (becoming their owner) and manages the
    /// functions it owns; reads everything a viewer reads.
    Developer,
    /// Everything: every function, users, node credentials, the audit log.
    Admin,
}

impl Role {
    pub const ALL: [Role; 3] = [Role::Viewer, Role::Developer, Role::Admin];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Viewer => "viewer",
            Self::Developer => "developer",
            Self::Admin => "admin",
        }
    }

    pub fn parse(text: &str) -> Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|r| r.as_str() == text)
            .ok_or_else(|| format!("must be one of admin, developer, viewer; got {text:?}"))
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Role {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        Self::parse(s)
    }
}

/// Longest user name.
pub const MAX_USERNAME_LEN: usize = 64;
/// Shortest accepted password.
pub const MIN_PASSWORD_LEN: usize = 8;
/// Longest accepted password (argon2 hashes whatever it gets: bound the work).
pub const MAX_PASSWORD_LEN: usize = 1024;
/// Longest token name.
pub const MAX_TOKEN_NAME_LEN: usize = 64;

/// A user name: 1 to [`MAX_USERNAME_LEN`] characters of `a-z 0-9 - _ .`,
/// starting with a letter.
pub fn validate_username(name: &str) -> Result<(), String> {
    let ok = name.len() <= MAX_USERNAME_LEN
        && name.bytes().next().is_some_and(|b| b.is_ascii_lowercase())
        && name.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'_' | b'.')
        });
    if ok {
        Ok(())
    } else {
        Err(format!(
            "must be 1 to {MAX_USERNAME_LEN} characters of a-z, 0-9, '-', '_' and '.', \
             starting with a letter; got {name:?}"
        ))
    }
}

/// A password: [`MIN_PASSWORD_LEN`] to [`MAX_PASSWORD_LEN`] bytes, no
/// control characters.
pub fn validate_password(password: &str) -> Result<(), String> {
    if password.len() < MIN_PASSWORD_LEN || password.len() > MAX_PASSWORD_LEN {
        return Err(format!(
            "must be {MIN_PASSWORD_LEN} to {MAX_PASSWORD_LEN} bytes long, got {}",
            password.len()
        ));
    }
    if password.chars().any(char::is_control) {
        return Err("must not contain control characters".into());
    }
    Ok(())
}

/// A token name: up to [`MAX_TOKEN_NAME_LEN`] printable characters.
pub fn validate_token_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.chars().count() > MAX_TOKEN_NAME_LEN {
        return Err(format!(
            "must be 1 to {MAX_TOKEN_NAME_LEN} characters, got {}",
            name.chars().count()
        ));
    }
    if name.chars().any(char::is_control) {
        return Err("must not contain control characters".into());
    }
    Ok(())
}

/// Longest duration [`parse_duration`] accepts (10 years).
pub const MAX_DURATION: Duration = Duration::from_secs(10 * 366 * 86_400);

/// Parses `90s`, `15m`, `12h`, `30d` or `2w` (a whole number and one unit).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let bad = || {
        format!("must be a whole number followed by s, m, h, d or w (e.g. 30d, 12h), got {text:?}")
    };
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
    let (number, unit) = text.split_at(split);
    let number: u64 = number.parse().map_err(|_| bad())?;
    let unit_s: u64 = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3_600,
        "d" => 86_400,
        "w" => 7 * 86_400,
        _ => return Err(bad()),
    };
    let secs = number
        .checked_mul(unit_s)
        .filter(|s| *s > 0 && *s <= MAX_DURATION.as_secs())
        .ok_or_else(|| format!("must be more than 0 and at most 10 years, got {text:?}"))?;
    Ok(Duration::from_secs(secs))
}

/// A user (`GET /api/v1/users`, the answer to the other user calls).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct UserInfo {
    pub username: String,
    pub role: Role,
    pub created_at: DateTime<Utc>,
    /// Functions the user owns.
    pub functions: i64,
}

/// `POST /api/v1/users`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewUser {
    pub username: String,
    pub password: String,
    pub role: Role,
    /// The calling admin's own password: needed when the token in use
    /// expires (a login's), since the user it adds outlives that token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_password: Option<String>,
}

/// `PUT /api/v1/users/{name}/role`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoleChange {
    pub role: Role,
    /// The calling admin's own password: needed when the token in use
    /// expires (a login's), since the role outlives that token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_password: Option<String>,
}

/// `PUT /api/v1/users/{name}/password`. `current_password` is the
/// caller's: a user changing its own password always gives it; an admin
/// setting another user's gives its own when the token in use expires (a
/// login's), since the password set outlives that token.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PasswordChange {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_password: Option<String>,
    pub new_password: String,
}

/// `GET /api/v1/whoami`: who the presented token belongs to.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct WhoAmI {
    pub username: String,
    /// The user's role.
    pub role: Role,
    /// What this token may do: the lower of `role` and its scope.
    pub effective_role: Role,
    pub token_id: i64,
}

/// `POST /api/v1/tokens`.
#[derive(Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewToken {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Lifetime in [`parse_duration`] syntax (`30d`); none: no expiry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires: Option<String>,
    /// Narrows the token to this role (at most the user's own).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role_scope: Option<Role>,
    /// The caller's own password: with it, a token that expires (a
    /// login's) may create one that outlives it, as a login could.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
}

/// Never shows the password.
impl std::fmt::Debug for NewToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewToken")
            .field("name", &self.name)
            .field("expires", &self.expires)
            .field("role_scope", &self.role_scope)
            .field("password", &self.password.as_ref().map(|_| "…"))
            .finish()
    }
}

/// One API token, never the token itself (`GET /api/v1/tokens`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct TokenInfo {
    pub id: i64,
    pub username: String,
    pub name: String,
    /// Where it came from: `bootstrap`, `login` or `token` (`cpub token create`).
    pub kind: String,
    pub role_scope: Option<Role>,
    pub created_at: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
    /// Updated at most once a minute.
    pub last_used_at: Option<DateTime<Utc>>,
    /// The token of the call that listed it.
    pub current: bool,
}

/// Answer to `POST /api/v1/tokens`: the token, shown once.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CreatedToken {
    pub token: String,
    pub info: TokenInfo,
}

/// Query of `GET /api/v1/tokens`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenQuery {
    /// Every user's tokens (admins only).
    #[serde(default)]
    pub all: bool,
}

/// A node credential, never the credential itself (`GET /api/v1/nodes`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct NodeInfo {
    pub node: String,
    pub created_by: String,
    pub created_at: DateTime<Utc>,
    pub last_used_at: Option<DateTime<Utc>>,
}

/// Query of `POST /api/v1/nodes/{node}/credential`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeCredentialQuery {
    /// Replace the node's credential if it has one (else 409).
    #[serde(default)]
    pub replace: bool,
}

/// Answer to `POST /api/v1/nodes/{node}/credential`: shown once.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CreatedNodeCredential {
    pub node: String,
    pub token: String,
}

/// Who made an audited call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ActorKind {
    User,
    Node,
    Anonymous,
}

/// One row of the audit log (`GET /api/v1/audit`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct AuditEntry {
    pub id: i64,
    pub at: DateTime<Utc>,
    pub actor_kind: ActorKind,
    /// User name, node name, or the user name a failed login named.
    pub actor: Option<String>,
    pub role: Option<Role>,
    pub action: String,
    pub target: String,
    pub function: Option<String>,
    pub status: u16,
    pub error: Option<String>,
    pub source: Option<String>,
    pub request_id: String,
}

/// Query of `GET /api/v1/audit`, newest first.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct AuditQuery {
    /// How far back: a [`parse_duration`] (`1h`) or an RFC 3339 time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<String>,
    /// Only calls by this user (or node) name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Only calls that named this function.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub function: Option<String>,
    /// At most this many rows (default and maximum [`MAX_AUDIT_ROWS`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
}

/// Most rows one audit query answers.
pub const MAX_AUDIT_ROWS: u32 = 10_000;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_order_and_parse() {
        assert!(Role::Viewer < Role::Developer && Role::Developer < Role::Admin);
        for role in Role::ALL {
            assert_eq!(Role::parse(role.as_str()), Ok(role));
            let json = serde_json::to_string(&role).unwrap();
            assert_eq!(json, format!("\"{role}\""));
        }
        assert!(
            Role::parse("root")
                .unwrap_err()
                .contains("admin, developer, viewer")
        );
    }

    #[test]
    fn names_and_passwords() {
        for ok in ["alice", "a", "bob.smith-2_x"] {
            assert!(validate_username(ok).is_ok(), "{ok}");
        }
        let long = "a".repeat(MAX_USERNAME_LEN + 1);
        for bad in ["", "Alice", "1abc", "a b", "é", "-x", long.as_str()] {
            assert!(validate_username(bad).is_err(), "{bad}");
        }
        assert!(validate_password("12345678").is_ok());
        assert!(validate_password("1234567").is_err());
        assert!(validate_password("12345678\n").is_err());
        assert!(validate_password(&"x".repeat(MAX_PASSWORD_LEN + 1)).is_err());
        assert!(validate_token_name("ci deploys").is_ok());
        assert!(validate_token_name("").is_err());
        assert!(validate_token_name("a\x1b[31m").is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30d"), Ok(Duration::from_secs(30 * 86_400)));
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("2w"), Ok(Duration::from_secs(14 * 86_400)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        for bad in [
            "",
            "d",
            "30",
            "30x",
            "-1d",
            "0d",
            "1.5h",
            "99999999999999999999d",
            "4000w",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }
}
