//! The `key=value,key=value` form of the device and jail flags (`--disk`, `--net`, `--vsock`,
//! `--fs`, `--jail`), parsed in one place so that every flag refuses the same mistakes with
//! the same words.
//!
//! A flag's `FromStr` declares its keys in a [`KeyValueFlag`], splits the text with
//! [`KeyValueFlag::parse`] and takes its typed values from the [`KeyValues`] it gets back;
//! what only that device can check (a MAC address, a disk serial) stays with the device.

use std::str::FromStr;

/// The syntax of one flag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyValueFlag {
    /// The flag as it is typed (`--disk`); errors start with it.
    pub name: &'static str,
    /// Every key the flag takes, in the order the unknown-key error lists them.
    pub keys: &'static [&'static str],
    /// Whether empty items (`a=b,,c=d`, a trailing comma, an empty flag) are skipped rather
    /// than refused as not `KEY=VALUE`. `--disk` has always refused them, the other flags
    /// skipped them; each keeps what it accepted.
    pub skip_empty_items: bool,
}

/// A problem with a flag's text, naming the flag and the key or item at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyValueError {
    #[error("{flag}: `{item}` is not KEY=VALUE")]
    NotKeyValue { flag: &'static str, item: String },
    #[error("{flag}: unknown key `{key}` (expected {})", .known.join(", "))]
    UnknownKey {
        flag: &'static str,
        key: String,
        known: &'static [&'static str],
    },
    #[error("{flag}: key `{key}` given twice")]
    DuplicateKey {
        flag: &'static str,
        key: &'static str,
    },
    #[error("{flag}: `{key}` is missing (got `{spec}`)")]
    MissingKey {
        flag: &'static str,
        key: &'static str,
        spec: String,
    },
    #[error("{flag}: `{key}` needs a value")]
    EmptyValue {
        flag: &'static str,
        key: &'static str,
    },
    #[error("{flag}: `{key}={value}` is not {expected}")]
    BadValue {
        flag: &'static str,
        key: &'static str,
        value: String,
        expected: &'static str,
    },
}

impl KeyValueFlag {
    /// Splits `spec` at commas, each item at its first `=` (values may hold `=`), refusing
    /// items without one, keys not in `keys` and keys given twice.
    pub fn parse<'a>(&self, spec: &'a str) -> Result<KeyValues<'a>, KeyValueError> {
        let mut values = vec![None; self.keys.len()];
        for item in spec.split(',') {
            if item.is_empty() && self.skip_empty_items {
                continue;
            }
            let (key, value) = item
                .split_once('=')
                .ok_or_else(|| KeyValueError::NotKeyValue {
                    flag: self.name,
                    item: item.to_string(),
                })?;
            let index = self
                .keys
                .iter()
                .position(|known| *known == key)
                .ok_or_else(|| KeyValueError::UnknownKey {
                    flag: self.name,
                    key: key.to_string(),
                    known: self.keys,
                })?;
            if values[index].replace(value).is_some() {
                return Err(KeyValueError::DuplicateKey {
                    flag: self.name,
                    key: self.keys[index],
                });
            }
        }
        Ok(KeyValues {
            flag: *self,
            spec,
            values,
        })
    }
}

/// The values of one flag, each key at most once, every key one the flag declared.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyValues<'a> {
    flag: KeyValueFlag,
    spec: &'a str,
    /// Indexed like `flag.keys`.
    values: Vec<Option<&'a str>>,
}

impl<'a> KeyValues<'a> {
    /// The value of `key`, `None` when it was not given.
    ///
    /// # Panics
    ///
    /// If `key` is not one of the flag's keys: a misspelt key would otherwise read as never
    /// given.
    pub fn get(&self, key: &'static str) -> Option<&'a str> {
        let index = self
            .flag
            .keys
            .iter()
            .position(|known| *known == key)
            .unwrap_or_else(|| panic!("`{key}` is not a key of {}", self.flag.name));
        self.values[index]
    }

    /// The value of a key the flag cannot do without.
    pub fn require(&self, key: &'static str) -> Result<&'a str, KeyValueError> {
        self.get(key).ok_or_else(|| KeyValueError::MissingKey {
            flag: self.flag.name,
            key,
            spec: self.spec.to_string(),
        })
    }

    /// `require`, also refusing `key=`.
    pub fn require_non_empty(&self, key: &'static str) -> Result<&'a str, KeyValueError> {
        match self.require(key)? {
            "" => Err(KeyValueError::EmptyValue {
                flag: self.flag.name,
                key,
            }),
            value => Ok(value),
        }
    }

    /// The value of `key` read as a `T`, `None` when it was not given; `expected` completes
    /// "is not ..." in the error (`"a number"`).
    pub fn parse<T: FromStr>(
        &self,
        key: &'static str,
        expected: &'static str,
    ) -> Result<Option<T>, KeyValueError> {
        self.get(key)
            .map(|value| self.read(key, value, expected))
            .transpose()
    }

    /// `parse` of a key the flag cannot do without.
    pub fn parse_required<T: FromStr>(
        &self,
        key: &'static str,
        expected: &'static str,
    ) -> Result<T, KeyValueError> {
        self.read(key, self.require(key)?, expected)
    }

    fn read<T: FromStr>(
        &self,
        key: &'static str,
        value: &str,
        expected: &'static str,
    ) -> Result<T, KeyValueError> {
        value.parse().map_err(|_| KeyValueError::BadValue {
            flag: self.flag.name,
            key,
            value: value.to_string(),
            expected,
        })
    }
}

/// `on` or `off`, the spelling of every boolean flag value.
pub fn on_off(value: &str) -> Option<bool> {
    match value {
        "on" => Some(true),
        "off" => Some(false),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FLAG: KeyValueFlag = KeyValueFlag {
        name: "--thing",
        keys: &["name", "size", "mode"],
        skip_empty_items: true,
    };

    #[test]
    fn splits_items_and_values_at_the_first_equals() {
        let kv = FLAG.parse("name=a=b,size=3").unwrap();
        assert_eq!(kv.get("name"), Some("a=b"));
        assert_eq!(kv.get("size"), Some("3"));
        assert_eq!(kv.get("mode"), None);
        assert_eq!(kv.require("size"), Ok("3"));
        assert_eq!(kv.parse::<u8>("size", "a number"), Ok(Some(3)));
        assert_eq!(kv.parse::<u8>("mode", "a number"), Ok(None));
        assert_eq!(FLAG.parse("size=").unwrap().require("size"), Ok(""));
    }

    #[test]
    fn empty_items_are_skipped_or_refused_as_the_flag_says() {
        let kv = FLAG.parse(",name=a,,size=1,").unwrap();
        assert_eq!((kv.get("name"), kv.get("size")), (Some("a"), Some("1")));
        assert_eq!(FLAG.parse("").unwrap().get("name"), None);

        let strict = KeyValueFlag {
            skip_empty_items: false,
            ..FLAG
        };
        for spec in ["name=a,", ",name=a", "name=a,,size=1", ""] {
            assert_eq!(
                strict.parse(spec),
                Err(KeyValueError::NotKeyValue {
                    flag: "--thing",
                    item: String::new()
                }),
                "{spec:?}"
            );
        }
    }

    #[test]
    fn each_problem_names_the_flag_and_the_key() {
        let cases = [
            (
                "name=a,size",
                KeyValueError::NotKeyValue {
                    flag: "--thing",
                    item: "size".into(),
                },
                "--thing: `size` is not KEY=VALUE",
            ),
            (
                "name=a,colour=red",
                KeyValueError::UnknownKey {
                    flag: "--thing",
                    key: "colour".into(),
                    known: FLAG.keys,
                },
                "--thing: unknown key `colour` (expected name, size, mode)",
            ),
            (
                "Name=a",
                KeyValueError::UnknownKey {
                    flag: "--thing",
                    key: "Name".into(),
                    known: FLAG.keys,
                },
                "--thing: unknown key `Name` (expected name, size, mode)",
            ),
            (
                "size=1,name=a,size=2",
                KeyValueError::DuplicateKey {
                    flag: "--thing",
                    key: "size",
                },
                "--thing: key `size` given twice",
            ),
        ];
        for (spec, want, text) in cases {
            let got = FLAG.parse(spec).unwrap_err();
            assert_eq!(got, want, "{spec}");
            assert_eq!(got.to_string(), text);
        }
    }

    #[test]
    fn missing_empty_and_bad_values_name_the_key() {
        let kv = FLAG.parse("name=,size=x").unwrap();
        let missing = kv.require("mode").unwrap_err();
        assert_eq!(
            missing,
            KeyValueError::MissingKey {
                flag: "--thing",
                key: "mode",
                spec: "name=,size=x".into()
            }
        );
        assert_eq!(
            missing.to_string(),
            "--thing: `mode` is missing (got `name=,size=x`)"
        );

        let empty = kv.require_non_empty("name").unwrap_err();
        assert_eq!(
            empty,
            KeyValueError::EmptyValue {
                flag: "--thing",
                key: "name"
            }
        );
        assert_eq!(empty.to_string(), "--thing: `name` needs a value");

        let bad = kv.parse::<u32>("size", "a number").unwrap_err();
        assert_eq!(
            bad,
            KeyValueError::BadValue {
                flag: "--thing",
                key: "size",
                value: "x".into(),
                expected: "a number"
            }
        );
        assert_eq!(bad.to_string(), "--thing: `size=x` is not a number");
        assert_eq!(kv.parse_required::<u32>("mode", "a number"), Err(missing));
        assert_eq!(kv.parse_required::<u32>("size", "a number"), Err(bad));
        assert_eq!(
            FLAG.parse("size=7")
                .unwrap()
                .parse_required::<u32>("size", "a number"),
            Ok(7)
        );
    }

    #[test]
    #[should_panic(expected = "`colour` is not a key of --thing")]
    fn asking_for_an_undeclared_key_is_a_bug() {
        let _ = FLAG.parse("name=a").unwrap().get("colour");
    }

    #[test]
    fn on_off_is_the_only_boolean_spelling() {
        assert_eq!(on_off("on"), Some(true));
        assert_eq!(on_off("off"), Some(false));
        for other in ["yes", "ON", "1", "true", ""] {
            assert_eq!(on_off(other), None, "{other}");
        }
    }
}
