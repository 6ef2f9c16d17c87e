//! What `cpub key` (`key.rs`) and `cpub signing-key` (`signing_key.rs`)
//! do, written once: a function's credentials are created (the secret
//! alone on stdout, shown this once; the rest on stderr), listed (a table
//! or the server's JSON, never a secret) and revoked. A kind says its
//! path, its names and how it prints ([`CredentialKind`]); its file keeps
//! its clap arguments and help.

use std::fmt::Display;

use anyhow::{Context as _, Result};
use comfy_table::{Table, presets::UTF8_FULL_CONDENSED};
use reqwest::Method;
use serde::de::DeserializeOwned;

use super::{Output, check_name, print_json};
use crate::client::Client;

/// The kind-specific parts of a function credential in the CLI.
pub(super) trait CredentialKind {
    /// The path below `/functions/{name}/` (`keys`).
    const PATH: &'static str;
    /// Its name in messages, one and several (`key`, `keys`).
    const SINGULAR: &'static str;
    const PLURAL: &'static str;
    /// The `cpub` command (`key`).
    const COMMAND: &'static str;
    /// The columns of `list`'s table.
    const HEADER: &'static [&'static str];

    /// The answer to a creation.
    type Created: DeserializeOwned;
    /// One credential as listed.
    type Info: DeserializeOwned;
    /// The id a credential is revoked by.
    type Id: Display;

    /// Says on stderr what was made; returns the secret to print alone on
    /// stdout.
    fn announce(function: &str, created: Self::Created) -> String;
    /// One row of `list`'s table.
    fn row(info: Self::Info) -> Vec<String>;
    /// Checks an id before anything is sent.
    fn check_id(_id: &Self::Id) -> Result<()> {
        Ok(())
    }
}

/// `cpub <kind> create FUNCTION [--label L]`.
pub(super) async fn create<K: CredentialKind>(
    client: &Client,
    function: &str,
    label: &str,
) -> Result<()> {
    check_name(function)?;
    let body = serde_json::json!({ "label": label });
    let answer = client
        .call(
            Method::POST,
            &format!("/functions/{function}/{}", K::PATH),
            Some(&body),
        )
        .await
        .with_context(|| format!("cannot create a {} for {function}", K::SINGULAR))?
        .with_context(|| format!("the server answered no {}", K::SINGULAR))?;
    let created: K::Created = serde_json::from_value(answer)
        .with_context(|| format!("unexpected answer to {} create", K::COMMAND))?;
    let secret = K::announce(function, created);
    println!("{secret}");
    Ok(())
}

/// `cpub <kind> list FUNCTION [-o json]`.
pub(super) async fn list<K: CredentialKind>(
    client: &Client,
    function: &str,
    output: Output,
) -> Result<()> {
    check_name(function)?;
    let answer = client
        .call(
            Method::GET,
            &format!("/functions/{function}/{}", K::PATH),
            None,
        )
        .await
        .with_context(|| format!("cannot list the {} of {function}", K::PLURAL))?
        .unwrap_or_default();
    if output == Output::Json {
        return print_json(&answer);
    }
    let infos: Vec<K::Info> = serde_json::from_value(answer)
        .with_context(|| format!("unexpected answer to {} list", K::COMMAND))?;
    if infos.is_empty() {
        eprintln!(
            "{function} has no {}; make one with `cpub {} create {function}`",
            K::PLURAL,
            K::COMMAND
        );
        return Ok(());
    }
    let mut table = Table::new();
    table
        .load_preset(UTF8_FULL_CONDENSED)
        .set_header(K::HEADER.iter().copied());
    for info in infos {
        table.add_row(K::row(info));
    }
    println!("{table}");
    Ok(())
}

/// `cpub <kind> revoke FUNCTION ID`.
pub(super) async fn revoke<K: CredentialKind>(
    client: &Client,
    function: &str,
    id: &K::Id,
) -> Result<()> {
    check_name(function)?;
    K::check_id(id)?;
    client
        .call(
            Method::DELETE,
            &format!("/functions/{function}/{}/{id}", K::PATH),
            None,
        )
        .await
        .with_context(|| format!("cannot revoke {} {id} of {function}", K::SINGULAR))?;
    println!("revoked {} {id} of {function}", K::SINGULAR);
    Ok(())
}
