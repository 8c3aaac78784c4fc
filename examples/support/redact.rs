//! Connection strings as the examples print them: without the password.
//!
//! It fails closed: what it cannot read is not printed at all.

/// What is printed in place of a connection string the redactor cannot read.
pub const UNREADABLE: &str = "(connection string not shown: it could not be read)";

/// `url` with every password replaced by `***`: the URL form's user-info
/// (`scheme://user:secret@host/...`) and any query parameter whose name contains "password"
/// (`?password=secret`, `&sslpassword=...`), or in PostgreSQL's key-value form every such key
/// (`password=secret`, `password = 'with spaces'`).
pub fn redacted(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => redacted_url(scheme, rest),
        None => redacted_key_values(url).unwrap_or_else(|| UNREADABLE.to_owned()),
    }
}

fn redacted_url(scheme: &str, rest: &str) -> String {
    // A raw `@`, `/` or `?` may sit inside a password that was not percent-encoded: all of
    // the text up to the last `@` is user-info as far as printing goes, and only a user name
    // that cannot be anything else (no path, query or fragment in it) is shown.
    let plain = |text: &str| !text.contains(['/', '?', '=', '#', '&']);
    let (user, tail) = match rest.rsplit_once('@') {
        Some((userinfo, tail)) => match userinfo.split_once(':') {
            Some((user, _password)) if plain(user) => (format!("{user}:***@"), tail),
            None if plain(userinfo) => (format!("{userinfo}@"), tail),
            _ => ("***@".to_owned(), tail),
        },
        None => (String::new(), rest),
    };
    let (host_and_path, query) = match tail.split_once('?') {
        Some((host_and_path, query)) => (host_and_path, Some(query)),
        None => (tail, None),
    };
    let mut shown = format!("{scheme}://{user}{host_and_path}");
    if let Some(query) = query {
        let pairs: Vec<String> = query
            .split('&')
            .map(|pair| match pair.split_once('=') {
                Some((key, _)) if names_a_password(key) => format!("{key}=***"),
                _ => pair.to_owned(),
            })
            .collect();
        shown.push('?');
        shown.push_str(&pairs.join("&"));
    }
    shown
}

/// libpq's `key=value` list: spaces around `=` allowed, values optionally single-quoted with
/// backslash escapes. `None` when it does not read as one.
fn redacted_key_values(text: &str) -> Option<String> {
    let mut chars = text.chars().peekable();
    let mut pairs = Vec::new();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.peek().is_none() {
            break;
        }
        let mut key = String::new();
        while let Some(c) = chars.next_if(|c| *c != '=' && !c.is_whitespace()) {
            key.push(c);
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        chars.next_if_eq(&'=')?;
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let mut value = String::new();
        if chars.next_if_eq(&'\'').is_some() {
            value.push('\'');
            loop {
                match chars.next()? {
                    '\\' => {
                        value.push('\\');
                        value.push(chars.next()?);
                    }
                    '\'' => break,
                    c => value.push(c),
                }
            }
            value.push('\'');
        } else {
            while let Some(c) = chars.next_if(|c| !c.is_whitespace()) {
                value.push(c);
                if c == '\\' {
                    value.push(chars.next()?);
                }
            }
        }
        if key.is_empty() {
            return None;
        }
        if names_a_password(&key) {
            value = "***".to_owned();
        }
        pairs.push(format!("{key}={value}"));
    }
    Some(pairs.join(" "))
}

fn names_a_password(key: &str) -> bool {
    key.to_ascii_lowercase().contains("password")
}
