//! A small `--name value` argument parser (the benchmarks need no more than that).

use std::{collections::BTreeMap, str::FromStr};

/// Parsed `--name value` pairs and `--flag`s.
#[derive(Debug, Default)]
pub struct Args {
    values: BTreeMap<String, String>,
    flags: Vec<String>,
}

impl Args {
    /// Parses the process arguments; `flags` lists the options that take no value.
    /// Exits with a usage message on anything else.
    pub fn parse(usage: &str, flags: &[&str]) -> Self {
        let mut args = Self::default();
        let mut iter = std::env::args().skip(1);
        while let Some(arg) = iter.next() {
            let Some(name) = arg.strip_prefix("--") else {
                fail(usage, &format!("unexpected argument `{arg}`"));
            };
            if name == "help" {
                println!("{usage}");
                std::process::exit(0);
            }
            if let Some((name, value)) = name.split_once('=') {
                args.values.insert(name.to_owned(), value.to_owned());
            } else if flags.contains(&name) {
                args.flags.push(name.to_owned());
            } else {
                let Some(value) = iter.next() else {
                    fail(usage, &format!("--{name} needs a value"));
                };
                args.values.insert(name.to_owned(), value);
            }
        }
        args
    }

    /// Whether `--name` was given.
    pub fn flag(&self, name: &str) -> bool {
        self.flags.iter().any(|flag| flag == name)
    }

    /// The value of `--name`, parsed, or `default`.
    pub fn get<T: FromStr>(&self, usage: &str, name: &str, default: T) -> T {
        match self.values.get(name) {
            None => default,
            Some(text) => text
                .parse()
                .unwrap_or_else(|_| fail(usage, &format!("bad value for --{name}: `{text}`"))),
        }
    }

    /// The comma-separated values of `--name`, each parsed with `parse`, or `default`.
    pub fn list<T>(
        &self,
        usage: &str,
        name: &str,
        default: Vec<T>,
        parse: impl Fn(&str) -> Option<T>,
    ) -> Vec<T> {
        match self.values.get(name) {
            None => default,
            Some(text) => text
                .split(',')
                .map(|item| {
                    parse(item.trim())
                        .unwrap_or_else(|| fail(usage, &format!("bad item in --{name}: `{item}`")))
                })
                .collect(),
        }
    }

    /// The value of `--name` as text, or `default`.
    pub fn text(&self, name: &str, default: &str) -> String {
        self.values
            .get(name)
            .cloned()
            .unwrap_or_else(|| default.to_owned())
    }
}

fn fail(usage: &str, message: &str) -> ! {
    eprintln!("error: {message}\n\n{usage}");
    std::process::exit(2)
}
