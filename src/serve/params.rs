//! Validated parameters of the query shapes.

use chrono::{Duration, NaiveDate, Utc};

use super::ServeError;

/// A course or content identifier: 1-128 characters of `[A-Za-z0-9_.:/-]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ident(String);

impl Ident {
    pub fn parse(what: &'static str, s: &str) -> Result<Ident, ServeError> {
        let ok = !s.is_empty() && s.len() <= 128 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.:/-".contains(&b));
        if ok {
            Ok(Ident(s.to_owned()))
        } else {
            Err(ServeError::invalid("invalid_identifier", format!("{what} must be 1-128 characters of letters, digits and _ . : / -")))
        }
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// An inclusive range of days; `from` defaults to 27 days before `to`, `to` to today (UTC).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DateRange {
    pub from: NaiveDate,
    pub to: NaiveDate,
}

impl DateRange {
    pub fn parse(from: Option<&str>, to: Option<&str>, max_days: i64) -> Result<DateRange, ServeError> {
        let day = |name: &str, s: &str| {
            NaiveDate::parse_from_str(s, "%Y-%m-%d").map_err(|_| ServeError::invalid("invalid_query", format!("`{name}` must be a date YYYY-MM-DD")))
        };
        let to = match to {
            Some(s) => day("to", s)?,
            None => Utc::now().date_naive(),
        };
        let from = match from {
            Some(s) => day("from", s)?,
            None => to - Duration::days(27),
        };
        if from > to {
            return Err(ServeError::invalid("invalid_query", "`from` must not be after `to`"));
        }
        if (to - from).num_days() + 1 > max_days {
            return Err(ServeError::invalid("invalid_query", format!("the range may span at most {max_days} days")));
        }
        Ok(DateRange { from, to })
    }

    pub fn params(&self) -> [(&'static str, String); 2] {
        [("from", self.from.to_string()), ("to", self.to.to_string())]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_and_ranges() {
        assert!(Ident::parse("course_id", "cs101").is_ok());
        assert!(Ident::parse("course_id", "cs'101").is_err());
        assert!(Ident::parse("course_id", "").is_err());
        let r = DateRange::parse(Some("2026-11-01"), Some("2026-11-28"), 400).unwrap();
        assert_eq!(r.params()[0].1, "2026-11-01");
        assert!(DateRange::parse(Some("2026-11-29"), Some("2026-11-28"), 400).is_err());
        assert!(DateRange::parse(Some("2026-01-01"), Some("2026-11-28"), 30).is_err());
        assert!(DateRange::parse(Some("yesterday"), None, 30).is_err());
        let d = DateRange::parse(None, Some("2026-11-28"), 400).unwrap();
        assert_eq!(d.from.to_string(), "2026-11-01");
    }
}
