//! `hello`: the smallest ContainerPub function. Answers every request with
//! `hello from ContainerPub` (or `$GREETING from ContainerPub`).

fn main() {
    let greeting = std::env::var("GREETING")
        .ok()
        .filter(|g| !g.trim().is_empty())
        .unwrap_or_else(|| "hello".to_owned());
    let text = format!("{greeting} from ContainerPub\n");
    if let Err(err) = fnhttp::serve(move |_req| fnhttp::Response::text(200, text.clone())) {
        eprintln!("hello: {err}");
        std::process::exit(1);
    }
}
