//! The client's calls for users, API tokens, node credentials and the audit
//! log (`/api/v1/users`, `/tokens`, `/nodes`, `/audit`, `/whoami`).

use anyhow::{Context, Result};
use containerpub_wire::access::{
    AuditEntry, AuditQuery, CreatedNodeCredential, CreatedToken, NewToken, NewUser, NodeInfo,
    PasswordChange, RoleChange, TokenInfo, UserInfo, WhoAmI,
};
use reqwest::Method;
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::{Client, Json};

impl Client {
    /// Sends `body` as JSON with `method` and reads a JSON answer.
    async fn call_json<B: Serialize + ?Sized, T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: &B,
    ) -> Result<T> {
        let response = self
            .send(self.http.request(method.clone(), self.url(path)).json(body))
            .await?;
        response
            .json()
            .await
            .with_context(|| format!("unexpected answer to {method} {path}"))
    }

    /// Sends `method` on `path` without a body, expecting no answer body.
    async fn call_empty(&self, method: Method, path: &str) -> Result<()> {
        self.send(self.http.request(method, self.url(path))).await?;
        Ok(())
    }

    /// `GET /whoami`.
    pub async fn whoami(&self) -> Result<WhoAmI> {
        Ok(self.get_json("/whoami").await?.typed)
    }

    /// `GET /users`.
    pub async fn users(&self) -> Result<Json<Vec<UserInfo>>> {
        self.get_json("/users").await
    }

    /// `POST /users`.
    pub async fn add_user(&self, user: &NewUser) -> Result<UserInfo> {
        self.call_json(Method::POST, "/users", user).await
    }

    /// `DELETE /users/{name}`.
    pub async fn remove_user(&self, name: &str) -> Result<()> {
        self.call_empty(Method::DELETE, &format!("/users/{name}"))
            .await
    }

    /// `PUT /users/{name}/role`.
    pub async fn set_role(&self, name: &str, change: &RoleChange) -> Result<UserInfo> {
        self.call_json(Method::PUT, &format!("/users/{name}/role"), change)
            .await
    }

    /// `PUT /users/{name}/password`.
    pub async fn set_password(&self, name: &str, change: &PasswordChange) -> Result<()> {
        self.send(
            self.http
                .put(self.url(&format!("/users/{name}/password")))
                .json(change),
        )
        .await?;
        Ok(())
    }

    /// `GET /tokens` (`all`: every user's, admins only).
    pub async fn tokens(&self, all: bool) -> Result<Json<Vec<TokenInfo>>> {
        self.get_json(if all { "/tokens?all=true" } else { "/tokens" })
            .await
    }

    /// `POST /tokens`.
    pub async fn create_token(&self, new: &NewToken) -> Result<CreatedToken> {
        self.call_json(Method::POST, "/tokens", new).await
    }

    /// `DELETE /tokens/{id}`.
    pub async fn revoke_token(&self, id: i64) -> Result<()> {
        self.call_empty(Method::DELETE, &format!("/tokens/{id}"))
            .await
    }

    /// `GET /nodes`.
    pub async fn nodes(&self) -> Result<Json<Vec<NodeInfo>>> {
        self.get_json("/nodes").await
    }

    /// `POST /nodes/{node}/credential[?replace=true]`.
    pub async fn create_node_credential(
        &self,
        node: &str,
        replace: bool,
    ) -> Result<CreatedNodeCredential> {
        let path = format!("/nodes/{node}/credential");
        let response = self
            .send(
                self.http
                    .post(self.url(&path))
                    .query(&[("replace", replace)]),
            )
            .await?;
        response
            .json()
            .await
            .with_context(|| format!("unexpected answer to POST {path}"))
    }

    /// `DELETE /nodes/{node}`.
    pub async fn revoke_node(&self, node: &str) -> Result<()> {
        self.call_empty(Method::DELETE, &format!("/nodes/{node}"))
            .await
    }

    /// `GET /audit`.
    pub async fn audit(&self, query: &AuditQuery) -> Result<Json<Vec<AuditEntry>>> {
        let response = self
            .send(self.http.get(self.url("/audit")).query(query))
            .await?;
        let raw: serde_json::Value = response
            .json()
            .await
            .context("invalid JSON from GET /audit")?;
        let typed =
            serde_json::from_value(raw.clone()).context("unexpected answer to GET /audit")?;
        Ok(Json { raw, typed })
    }
}
