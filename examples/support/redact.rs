//! Connection strings as the examples print them: without the password.

/// `url` with its password replaced by `***`, in the URL form
/// (`scheme://user:secret@host/...`) and in PostgreSQL's key-value form (`password=secret`).
pub fn redacted(url: &str) -> String {
    if let Some((scheme, rest)) = url.split_once("://") {
        let (authority, path) = rest.split_at(rest.find(['/', '?']).unwrap_or(rest.len()));
        if let Some((userinfo, host)) = authority.rsplit_once('@') {
            if let Some((user, _password)) = userinfo.split_once(':') {
                return format!("{scheme}://{user}:***@{host}{path}");
            }
        }
        return url.to_owned();
    }
    url.split_whitespace()
        .map(|pair| match pair.split_once('=') {
            Some((key, _)) if key.eq_ignore_ascii_case("password") => "password=***",
            _ => pair,
        })
        .collect::<Vec<_>>()
        .join(" ")
}
