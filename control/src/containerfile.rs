//! What a bundle's Containerfile may refer to: only `scratch`, base images
//! the platform allows, and earlier stages of the same file. Never another
//! image on the host (another function's `localhost/cpub-fn-*`), never a
//! URL (`ADD https://…` is fetched by Podman itself, on the host's network),
//! never a `RUN --mount` (bind or cache mounts from images or shared host
//! directories).
//!
//! The parser follows the Dockerfile rules that decide where an instruction
//! starts: parser directives (`# escape=`), comment lines, line
//! continuations (also across comment and empty lines). It reads more
//! strictly than Buildah when in doubt (a heredoc body line that looks like
//! an instruction is checked as one).

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::Path;

use tar::EntryType;

/// Largest Containerfile read.
pub const MAX_CONTAINERFILE_BYTES: u64 = 1 << 20;

/// One instruction, with the line (1-based) it starts on.
#[derive(Debug, PartialEq, Eq)]
struct Instruction {
    line: usize,
    keyword: String,
    /// The rest of the instruction, continuations joined.
    args: String,
}

/// Splits a Containerfile into instructions.
fn instructions(text: &str) -> Vec<Instruction> {
    let mut escape = '\\';
    let mut out = Vec::new();
    let mut current: Option<Instruction> = None;
    let mut directives_allowed = true;
    for (i, raw) in text.lines().enumerate() {
        let line_no = i + 1;
        let trimmed = raw.trim_start();
        if current.is_none() && directives_allowed {
            if let Some((key, value)) = trimmed.strip_prefix('#').and_then(|r| r.split_once('=')) {
                let key = key.trim().to_ascii_lowercase();
                if key == "escape" {
                    if let Some(c) = value.trim().chars().next() {
                        escape = c;
                    }
                    continue;
                }
                if key == "syntax" || key == "check" {
                    continue;
                }
            }
            directives_allowed = false;
        }
        if trimmed.starts_with('#') {
            continue; // comment, also inside a continuation
        }
        if trimmed.trim().is_empty() {
            continue;
        }
        let content = raw.trim_end();
        let (part, continues) = match content.strip_suffix(escape) {
            Some(p) => (p, true),
            None => (content, false),
        };
        match current.as_mut() {
            Some(inst) => {
                inst.args.push(' ');
                inst.args.push_str(part.trim());
            }
            None => {
                let part = part.trim_start();
                let (keyword, args) = part.split_once(char::is_whitespace).unwrap_or((part, ""));
                current = Some(Instruction {
                    line: line_no,
                    keyword: keyword.to_ascii_uppercase(),
                    args: args.trim().to_owned(),
                });
            }
        }
        if !continues && let Some(inst) = current.take() {
            out.push(inst);
        }
    }
    if let Some(inst) = current.take() {
        out.push(inst);
    }
    out
}

/// Leading `--flag[=value]` words of an instruction, and the rest.
fn flags(args: &str) -> (Vec<&str>, &str) {
    let mut rest = args.trim_start();
    let mut out = Vec::new();
    while rest.starts_with("--") {
        let end = rest.find(char::is_whitespace).unwrap_or(rest.len());
        out.push(&rest[..end]);
        rest = rest[end..].trim_start();
    }
    (out, rest)
}

/// Checks what the Containerfile refers to; the error names the line.
pub fn check(text: &str, allowed_bases: &[String]) -> Result<(), String> {
    let mut stages: Vec<String> = Vec::new();
    let allowed = || {
        let mut list = vec!["scratch".to_owned()];
        list.extend(allowed_bases.iter().cloned());
        list.join(", ")
    };
    let refuse = |inst: &Instruction, why: String| {
        Err(format!(
            "line {}: `{} {}`: {why}",
            inst.line, inst.keyword, inst.args
        ))
    };
    for inst in instructions(text) {
        match inst.keyword.as_str() {
            "FROM" => {
                let (_flags, rest) = flags(&inst.args);
                let mut words = rest.split_whitespace();
                let image = words.next().unwrap_or("");
                let name = match (words.next(), words.next(), words.next()) {
                    (None, ..) => None,
                    (Some(a), Some(n), None) if a.eq_ignore_ascii_case("as") => {
                        Some(n.to_ascii_lowercase())
                    }
                    _ => return refuse(&inst, "expected `FROM <image> [AS <name>]`".into()),
                };
                if image.is_empty() {
                    return refuse(&inst, "FROM without an image".into());
                }
                if image.contains('$') {
                    return refuse(
                        &inst,
                        "variables are not allowed in FROM; name the base image".into(),
                    );
                }
                let earlier = stages.iter().any(|s| s == &image.to_ascii_lowercase());
                if !(image == "scratch" || earlier || allowed_bases.iter().any(|b| b == image)) {
                    return refuse(
                        &inst,
                        format!(
                            "base image {image:?} is not allowed; a build may start from {} or an earlier stage",
                            allowed()
                        ),
                    );
                }
                stages.push(name.unwrap_or_default());
            }
            "COPY" | "ADD" => {
                let (flags, rest) = flags(&inst.args);
                for flag in flags {
                    let Some(from) = flag.strip_prefix("--from=") else {
                        continue;
                    };
                    let from = from.trim_matches('"');
                    let index_ok = from.parse::<usize>().is_ok_and(|i| i < stages.len());
                    let name_ok =
                        !from.is_empty() && stages.iter().any(|s| *s == from.to_ascii_lowercase());
                    if !(index_ok || name_ok) {
                        return refuse(
                            &inst,
                            format!(
                                "--from={from:?} is not an earlier stage; copying from images is not allowed"
                            ),
                        );
                    }
                }
                if inst.keyword == "ADD" && has_url(rest) {
                    return refuse(
                        &inst,
                        "ADD from a URL is not allowed: builds have no network".into(),
                    );
                }
            }
            "RUN" => {
                let (flags, _) = flags(&inst.args);
                if let Some(flag) = flags.first() {
                    return refuse(&inst, format!("RUN options ({flag}) are not allowed"));
                }
            }
            "ONBUILD" => {
                return refuse(&inst, "ONBUILD is not allowed".into());
            }
            _ => {}
        }
    }
    if stages.is_empty() {
        return Err("the Containerfile has no FROM instruction".into());
    }
    Ok(())
}

fn has_url(sources: &str) -> bool {
    sources
        .split(|c: char| c.is_whitespace() || c == '"' || c == '[' || c == ',')
        .any(|w| {
            let w = w.to_ascii_lowercase();
            w.contains("://") || w.starts_with("git@")
        })
}

/// Reads `name` from an uncompressed build context tar (following one
/// hardlink), refusing more than [`MAX_CONTAINERFILE_BYTES`].
pub fn read_from_context(context_tar: &Path, name: &str) -> Result<String, String> {
    let mut wanted = name.to_owned();
    for _ in 0..2 {
        let file =
            File::open(context_tar).map_err(|e| format!("reading the build context: {e}"))?;
        let mut archive = tar::Archive::new(BufReader::new(file));
        let entries = archive
            .entries()
            .map_err(|e| format!("reading the build context: {e}"))?;
        let mut link = None;
        for entry in entries {
            let mut entry = entry.map_err(|e| format!("reading the build context: {e}"))?;
            if *entry.path_bytes() != *wanted.as_bytes() {
                continue;
            }
            match entry.header().entry_type() {
                EntryType::Regular => {
                    if entry.size() > MAX_CONTAINERFILE_BYTES {
                        return Err(format!(
                            "{name} is {} bytes; the limit is {MAX_CONTAINERFILE_BYTES}",
                            entry.size()
                        ));
                    }
                    let mut text = String::new();
                    (&mut entry)
                        .take(MAX_CONTAINERFILE_BYTES)
                        .read_to_string(&mut text)
                        .map_err(|_| format!("{name} is not valid UTF-8"))?;
                    return Ok(text);
                }
                EntryType::Link => {
                    link = entry
                        .link_name_bytes()
                        .map(|l| String::from_utf8_lossy(&l).into_owned());
                    break;
                }
                _ => return Err(format!("{name} must be a regular file")),
            }
        }
        match link {
            Some(target) => wanted = target,
            None => break,
        }
    }
    Err(format!("{name} is not in the build context"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(text: &str) -> String {
        check(text, &[]).expect_err(text)
    }

    #[test]
    fn scratch_and_earlier_stages_are_fine() {
        check("FROM scratch\nCOPY a /a\n", &[]).unwrap();
        check(
            "# syntax=docker/dockerfile:1\n# escape=`\nFROM scratch AS Build\nCOPY a /a\nRUN [\"/a\"]\nFROM build\nFROM scratch\nCOPY --from=build /a /b\nCOPY --from=1 /a /c\n",
            &[],
        )
        .unwrap();
        check("FROM --platform=linux/amd64 scratch\n", &[]).unwrap();
        check(
            "FROM localhost/cpub-base:1\n",
            &["localhost/cpub-base:1".to_owned()],
        )
        .unwrap();
        // The generated Containerfile of binary bundles passes.
        check(&crate::archive::generated_containerfile(8080), &[]).unwrap();
    }

    #[test]
    fn other_images_are_refused_naming_the_line() {
        let msg = refused("FROM scratch\n\nfrom localhost/cpub-fn-other:v1 AS x\n");
        assert!(
            msg.starts_with("line 3: `FROM localhost/cpub-fn-other:v1 AS x`"),
            "{msg}"
        );
        assert!(msg.contains("not allowed"), "{msg}");
        let msg = refused("FROM docker.io/library/alpine\n");
        assert!(msg.contains("\"docker.io/library/alpine\""), "{msg}");
        // A later stage name does not count, nor a stage defined by itself.
        assert!(refused("FROM b AS b\n").contains("line 1"));
        assert!(refused("FROM scratch\nFROM later\nFROM scratch AS later\n").contains("line 2"));
        assert!(refused("ARG B=localhost/cpub-fn-x:v1\nFROM $B\n").contains("variables"));
        assert!(refused("FROM ${B}\n").contains("variables"));
        // Continuations and comments cannot hide a FROM.
        let msg = refused("FROM \\\n# a comment\n  localhost/cpub-fn-x:v1\n");
        assert!(
            msg.starts_with("line 1:") && msg.contains("cpub-fn-x"),
            "{msg}"
        );
        let msg =
            refused("# escape=`\nFROM scratch\nRUN echo `\nFROM localhost/x\nFROM localhost/y\n");
        assert!(msg.starts_with("line 5:"), "{msg}");
        assert!(refused("COPY a b\n").contains("no FROM"));
        assert!(refused("FROM scratch AS a b\n").contains("expected"));
    }

    #[test]
    fn images_urls_and_mounts_outside_from_are_refused() {
        let msg = refused("FROM scratch\nCOPY --from=localhost/cpub-fn-other:v1 / /\n");
        assert!(
            msg.starts_with("line 2:") && msg.contains("not an earlier stage"),
            "{msg}"
        );
        assert!(refused("FROM scratch\nCOPY --from=1 / /\n").contains("line 2"));
        let msg = refused("FROM scratch\nADD http://127.0.0.1:5432/ /x\n");
        assert!(msg.contains("URL"), "{msg}");
        assert!(refused("FROM scratch\nADD [\"https://x/y\", \"/y\"]\n").contains("URL"));
        assert!(refused("FROM scratch\nADD git@github.com:a/b /b\n").contains("URL"));
        let msg = refused("FROM scratch\nRUN --mount=type=cache,target=/c ls\n");
        assert!(
            msg.contains("RUN options (--mount=type=cache,target=/c)"),
            "{msg}"
        );
        assert!(refused("FROM scratch\nRUN --network=host ls\n").contains("--network"));
        assert!(refused("FROM scratch\nONBUILD RUN ls\n").contains("ONBUILD"));
        check(
            "FROM scratch\nADD app.tar /\nRUN [\"/bin/busybox\", \"--help\"]\n",
            &[],
        )
        .unwrap();
    }
}
