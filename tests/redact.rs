//! The examples print the connection string they use: never its password, in any of the
//! forms the drivers accept.

#[path = "../examples/support/redact.rs"]
mod redact;

use redact::{UNREADABLE, redacted};

#[test]
fn url_passwords_are_hidden_in_the_user_info_and_the_query() {
    for (url, shown) in [
        (
            "postgresql://app:hunter2@127.0.0.1:5432/db",
            "postgresql://app:***@127.0.0.1:5432/db",
        ),
        (
            "redis://:hunter2@127.0.0.1:6379/0",
            "redis://:***@127.0.0.1:6379/0",
        ),
        ("redis://127.0.0.1:6379/", "redis://127.0.0.1:6379/"),
        (
            "postgres://u@h/db?password=hunter2&sslmode=disable",
            "postgres://u@h/db?password=***&sslmode=disable",
        ),
        (
            "postgres://u@h/db?sslmode=require&SSLPASSWORD=hunter2",
            "postgres://u@h/db?sslmode=require&SSLPASSWORD=***",
        ),
        // Not percent-encoded: `/`, `@` and `?` inside the password.
        ("postgres://u:hun/ter@2@h/db", "postgres://u:***@h/db"),
        ("postgres://u:hun?ter2@h/db", "postgres://u:***@h/db"),
        ("postgres://h/db?password=hun@ter2", "postgres://***@ter2"),
    ] {
        assert_eq!(redacted(url), shown, "{url}");
        assert!(!redacted(url).contains("hunter2"), "{url}");
    }
}

#[test]
fn key_value_passwords_are_hidden_however_they_are_written() {
    for (text, shown) in [
        (
            "host=h user=u password=hunter2 dbname=db",
            "host=h user=u password=*** dbname=db",
        ),
        (
            "host=h password='hunter2 with spaces' dbname=db",
            "host=h password=*** dbname=db",
        ),
        ("host = h password = hunter2", "host=h password=***"),
        ("PASSWORD='it\\'s hunter2' port=1", "PASSWORD=*** port=1"),
        (
            "application_name='my app' host=h",
            "application_name='my app' host=h",
        ),
    ] {
        assert_eq!(redacted(text), shown, "{text}");
    }
}

#[test]
fn what_cannot_be_read_is_not_printed() {
    for text in [
        "host=h password='hunter2",
        "host=h hunter2",
        "=hunter2",
        "password=hunter2\\",
    ] {
        assert_eq!(redacted(text), UNREADABLE, "{text}");
    }
}
