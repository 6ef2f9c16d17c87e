//! What a bundle's Containerfile may refer to: only `scratch`, base images
//! the platform allows, and earlier stages of the same file. Never another
//! image on the host (another function's `localhost/cpub-fn-*`), never a
//! URL (`ADD https://…` is fetched by Podman itself, on the host's network),
//! never a `RUN --mount` (bind or cache mounts from images or shared host
//! directories).
//!
//! The parser follows the Dockerfile rules that decide where an instruction
//! starts: comment lines, line continuations (also across comment and empty
//! lines). It reads more strictly than Buildah when in doubt (a heredoc body
//! line that looks like an instruction is checked as one), and refuses what
//! Buildah (openshift/imagebuilder) would read otherwise than this check:
//! the `# escape=` directive (imagebuilder honours it only before any other
//! directive), a byte-order mark, control characters and whitespace other
//! than spaces and tabs (a continuation is `\` then spaces and tabs only,
//! as imagebuilder's rule), and in `COPY`/`ADD` variables, backslashes,
//! quotes in options and any option but `--chown`, `--chmod` and `--from`
//! (imagebuilder expands variables and removes escapes and quotes before it
//! reads the words, so `ADD $URL` or `COPY --fr\om=image` would pass a
//! literal check). The build service has no network of its own either
//! (scripts/setup-host.sh), so a URL this check missed could not be fetched.

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

/// Characters Buildah and this check could read differently: refused
/// anywhere in the file, naming the line.
fn check_characters(text: &str) -> Result<(), String> {
    for (i, line) in text.lines().enumerate() {
        for c in line.chars() {
            let why = if c == '\u{feff}' {
                "a byte-order mark"
            } else if c.is_control() && c != '\t' {
                "a control character"
            } else if c.is_whitespace() && c != ' ' && c != '\t' {
                "whitespace other than spaces and tabs"
            } else {
                continue;
            };
            return Err(format!(
                "line {}: {why} (U+{:04X}) is not allowed in a Containerfile",
                i + 1,
                u32::from(c)
            ));
        }
    }
    Ok(())
}

/// Splits a Containerfile into instructions as imagebuilder's `Parse`
/// does; refuses the escape directive. An instruction's first line loses
/// its leading blanks; a continuation line is appended as it is, without
/// its `\` and the blanks after it, with nothing put between (so `COP\`
/// then `Y --from=x` is `COPY --from=x`, and a line of only `\` makes the
/// next line the instruction); comment and blank lines inside a
/// continuation are skipped; the keyword is split off the whole line.
fn instructions(text: &str) -> Result<Vec<Instruction>, String> {
    check_characters(text)?;
    let blank = [' ', '\t'];
    // `\` then blanks to the end: the continuation rule.
    let continued = |line: &str| {
        line.trim_end_matches(blank)
            .strip_suffix('\\')
            .map(str::to_owned)
    };
    let mut out = Vec::new();
    // The instruction being read: its first line and its text so far.
    let mut current: Option<(usize, String)> = None;
    let finish = |line_no: usize, text: &str, out: &mut Vec<Instruction>| {
        let text = text.trim_matches(blank);
        let (keyword, args) = text.split_once(blank).unwrap_or((text, ""));
        out.push(Instruction {
            line: line_no,
            keyword: keyword.to_ascii_uppercase(),
            args: args.trim_matches(blank).to_owned(),
        });
    };
    for (i, raw) in text.lines().enumerate() {
        let line_no = i + 1;
        let trimmed = raw.trim_start_matches(blank);
        if let Some(comment) = trimmed.strip_prefix('#') {
            if let Some((key, _)) = comment.split_once('=')
                && key.trim_matches(blank).eq_ignore_ascii_case("escape")
            {
                return Err(format!(
                    "line {line_no}: the escape directive is not allowed; continue lines with \\"
                ));
            }
            continue; // comment, also inside a continuation
        }
        match current.take() {
            None => {
                if trimmed.is_empty() {
                    continue;
                }
                match continued(trimmed) {
                    Some(part) => current = Some((line_no, part)),
                    None => finish(line_no, trimmed, &mut out),
                }
            }
            Some((start, mut text)) => {
                if trimmed.is_empty() {
                    current = Some((start, text));
                    continue;
                }
                match continued(raw) {
                    Some(part) => {
                        text.push_str(&part);
                        current = Some((start, text));
                    }
                    None => {
                        text.push_str(raw);
                        finish(start, &text, &mut out);
                    }
                }
            }
        }
    }
    if let Some((start, text)) = current {
        finish(start, &text, &mut out);
    }
    Ok(out)
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
    for inst in instructions(text)? {
        match inst.keyword.as_str() {
            "FROM" => {
                let (_flags, rest) = flags(&inst.args);
                let mut words = rest.split_whitespace();
                let image = words.next().unwrap_or("");
                let name = match (words.next(), words.next(), words.next()) {
                    (None, ..) => None,
                    (Some(a), Some(n), None) if a.eq_ignore_ascii_case("as") => Some(n.to_owned()),
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
                if let Some(name) = &name
                    && !is_stage_name(name)
                {
                    return refuse(
                        &inst,
                        format!(
                            "stage name {name:?} must start with a lowercase letter and hold only lowercase letters, digits, `_`, `.` and `-`"
                        ),
                    );
                }
                // Names compare exactly: Buildah's stage lookups are
                // case-sensitive, and a name it does not find as a stage
                // it looks up as an image, by a short id's prefix too.
                let earlier = stages.iter().any(|s| s == image);
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
                let keyword = inst.keyword.as_str();
                if inst.args.contains('$') {
                    return refuse(
                        &inst,
                        format!("variables are not allowed in {keyword}; write the paths out"),
                    );
                }
                if inst.args.contains('\\') {
                    return refuse(&inst, format!("backslashes are not allowed in {keyword}"));
                }
                let (flags, rest) = flags(&inst.args);
                for flag in flags {
                    let known = ["--chown=", "--chmod=", "--from="]
                        .iter()
                        .any(|k| flag.starts_with(k));
                    let plain = flag.bytes().all(|b| {
                        b.is_ascii_alphanumeric()
                            || matches!(b, b'-' | b'=' | b'_' | b'.' | b':' | b'/')
                    });
                    if !(known && plain) {
                        return refuse(
                            &inst,
                            format!(
                                "{keyword} option {flag} is not allowed (only --chown=, --chmod= and --from= an earlier stage, without quotes)"
                            ),
                        );
                    }
                    let Some(from) = flag.strip_prefix("--from=") else {
                        continue;
                    };
                    // A stage before this one (Buildah takes no other; its
                    // own name or a later one it looks up as an image), by
                    // its exact name or its index as Buildah spells it
                    // (`1`, not `01`).
                    let earlier = stages
                        .get(..stages.len().saturating_sub(1))
                        .unwrap_or_default();
                    let index_ok = from
                        .parse::<usize>()
                        .is_ok_and(|i| i < earlier.len() && from == i.to_string());
                    let name_ok = !from.is_empty() && earlier.iter().any(|s| s == from);
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

/// Whether ADD's sources name a URL, read as Buildah reads them: with the
/// quotes taken out (`h"ttp:/"/x` is `http://x` to it; the JSON form's
/// quotes go the same way).
fn has_url(sources: &str) -> bool {
    let unquoted: String = sources
        .chars()
        .filter(|c| !matches!(c, '"' | '\''))
        .collect();
    unquoted
        .split(|c: char| c.is_whitespace() || c == '[' || c == ',')
        .any(|w| {
            let w = w.to_ascii_lowercase();
            w.contains("://") || w.starts_with("git@")
        })
}

/// A stage name as Docker allows it: Buildah would take anything else for
/// an image to look up (`AS localhost/cpub-fn-x` then `FROM
/// localhost/cpub-fn-x`).
fn is_stage_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    bytes.next().is_some_and(|b| b.is_ascii_lowercase())
        && bytes.all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b'.' | b'-')
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
            "# syntax=docker/dockerfile:1\nFROM scratch AS build\nCOPY a /a\nRUN [\"/a\"]\nFROM build\nFROM scratch\nCOPY --from=build /a /b\nCOPY --from=1 --chown=65534:65534 --chmod=0755 /a /c\r\nCOPY [\"a b\", \"/d/\"]\n",
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
            refused("FROM scratch\nRUN echo \\ \t \n\n# c\n  FROM localhost/x\nFROM localhost/y\n");
        assert!(msg.starts_with("line 6:"), "{msg}");
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

    /// What Buildah expands, unescapes or unquotes before it reads the
    /// words cannot pass for something else (review helper-63).
    #[test]
    fn variables_escapes_and_quotes_cannot_disguise_a_url_or_an_image() {
        for (text, why) in [
            ("ARG U=http://127.0.0.1:5432/\nADD $U /loot", "variables"),
            ("ADD ${U} /loot", "variables"),
            ("ADD http:/\\/169.254.169.254/latest/ /m", "backslashes"),
            ("ADD [\"http:\\/\\/127.0.0.1/\", \"/m\"]", "backslashes"),
            ("ADD h\"ttp:/\"/127.0.0.1/ /m", "URL"),
            ("ADD 'http://127.0.0.1/' /m", "URL"),
            (
                "COPY --fr\\om=localhost/cpub-fn-x:v1 / /loot",
                "backslashes",
            ),
            (
                "COPY --fr${E}om=localhost/cpub-fn-x:v1 / /loot",
                "variables",
            ),
            ("COPY --fr\"om\"=localhost/cpub-fn-x:v1 / /loot", "option"),
            ("COPY --from=\"localhost/cpub-fn-x:v1\" / /loot", "option"),
            ("COPY --link / /x", "option --link"),
            ("ADD --checksum=sha256:00 a /a", "option --checksum"),
        ] {
            let msg = refused(&format!("FROM scratch\n{text}\n"));
            assert!(msg.contains(why), "{text}: {msg}");
        }
        // Stage references Buildah would look up as an image (by a short
        // id's prefix too): the stage itself, another case, `01` for 1
        // (review helper-66).
        for text in [
            "FROM scratch AS a\nCOPY --from=a / /loot",
            "FROM scratch\nCOPY --from=0 / /loot",
            "FROM scratch AS b\nFROM scratch\nCOPY --from=01 / /loot",
            "FROM scratch AS b\nFROM scratch\nCOPY --from=B / /loot",
        ] {
            let msg = refused(&format!("{text}\n"));
            assert!(msg.contains("not an earlier stage"), "{text}: {msg}");
        }
        let msg = refused("FROM scratch AS A0\nFROM a0\n");
        assert!(
            msg.starts_with("line 1:") && msg.contains("lowercase"),
            "{msg}"
        );
        // A stage name Buildah would look up as an image.
        let msg = refused("FROM scratch AS localhost/cpub-fn-x:v1\nFROM localhost/cpub-fn-x:v1\n");
        assert!(
            msg.starts_with("line 1:") && msg.contains("stage name"),
            "{msg}"
        );
    }

    /// Lines split as imagebuilder splits them: no escape directive, no
    /// byte-order mark, a continuation ends in `\` and spaces or tabs only
    /// (a form feed or a no-break space after it would have continued the
    /// line for this check and not for Buildah, hiding the next one).
    #[test]
    fn what_could_split_lines_differently_is_refused() {
        let hidden = "FROM scratch\nWORKDIR /w `\nADD http://127.0.0.1:8080/ /x\n";
        let msg = refused(&format!("# syntax=x\n# escape=`\n{hidden}"));
        assert!(
            msg.starts_with("line 2:") && msg.contains("escape"),
            "{msg}"
        );
        assert!(refused(&format!("#escape = `\n{hidden}")).contains("escape"));
        let msg = refused("\u{feff}# escape=`\nFROM scratch\n");
        assert!(msg.contains("byte-order mark"), "{msg}");
        for end in ["\u{c}", "\u{a0}", "\u{b}", "\u{2028}"] {
            let text = format!("FROM scratch\nWORKDIR /w \\{end}\nADD http://127.0.0.1/ /x\n");
            let msg = refused(&text);
            assert!(msg.starts_with("line 2:"), "{end:?}: {msg}");
        }
        // Continuations are joined with nothing between, the keyword split
        // off the whole: `COP\` + `Y` is COPY, a lone `\` makes the next
        // line the instruction (review helper-66: both hid the line).
        for text in [
            "FROM scratch\nCOP\\\nY --from=localhost/cpub-fn-x:v1 / /loot\n",
            "FROM scratch\n\\\nCOPY --from=localhost/cpub-fn-x:v1 / /loot\n",
            "FROM scratch\n  \\ \n# c\n\nCOPY --from=localhost/cpub-fn-x:v1 / /loot\n",
        ] {
            let msg = refused(text);
            assert!(
                msg.starts_with("line 2:") && msg.contains("not an earlier stage"),
                "{text:?}: {msg}"
            );
        }
        let msg = refused("FROM scratch\nAD\\\nD \"http:/\\\n/127.0.0.1/\" /x\n");
        assert!(msg.starts_with("line 2:") && msg.contains("URL"), "{msg}");
        let msg = refused("FROM scratch\nAD\\\nD \"http:/\\  \n/127.0.0.1/\" /x\n");
        assert!(msg.starts_with("line 2:") && msg.contains("URL"), "{msg}");
        let read = instructions("FROM scratch\nAD\\\nD \"http:/\\\n/127.0.0.1/\" /x\n").unwrap();
        assert_eq!(
            (read[1].keyword.as_str(), read[1].args.as_str()),
            ("ADD", "\"http://127.0.0.1/\" /x")
        );
        // A carriage return ends a line only before a line feed (as for
        // imagebuilder's scanner); alone it is refused.
        let msg = refused("FROM scratch\rADD http://127.0.0.1/ /x\n");
        assert!(msg.contains("control character (U+000D)"), "{msg}");
        // Spaces and tabs after the backslash continue the line for both:
        // the ADD is a word of WORKDIR to Buildah too.
        let text = "FROM scratch\nWORKDIR /w \\ \t\nADD http://127.0.0.1/ /x\n";
        let read = instructions(text).unwrap();
        assert_eq!(read.len(), 2, "{read:?}");
        assert_eq!(read[1].args, "/w ADD http://127.0.0.1/ /x");
    }
}
