//! Query strings of the list routes, read the same way by the API and the dashboard: a query
//! that does not parse, or a page out of range, is a 400 `invalid_query` saying what is wrong.

use axum::extract::Query;
use axum::extract::rejection::QueryRejection;
use mesh_service::ApiError;

/// A query string, or 400 `invalid_query` saying what is wrong with it.
pub(crate) fn query_of<T>(query: Result<Query<T>, QueryRejection>) -> Result<T, ApiError> {
    query
        .map(|Query(q)| q)
        .map_err(|e| ApiError::bad_request("invalid_query", e.body_text()))
}

/// A `?limit=` within `1..=max`, `default` when absent.
pub(crate) fn page_limit(
    requested: Option<usize>,
    default: usize,
    max: usize,
) -> Result<usize, ApiError> {
    let limit = requested.unwrap_or(default);
    if (1..=max).contains(&limit) {
        Ok(limit)
    } else {
        Err(ApiError::bad_request(
            "invalid_query",
            format!("limit must be from 1 to {max}"),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_limits_stay_within_one_to_max() {
        #[track_caller]
        fn check(requested: Option<usize>, expect: Result<usize, &str>) {
            let got = page_limit(requested, 50, 500).map_err(|e| {
                assert_eq!((e.status.as_u16(), e.code.as_ref()), (400, "invalid_query"));
                e.message
            });
            assert_eq!(got, expect.map_err(str::to_string), "{requested:?}");
        }
        check(None, Ok(50));
        check(Some(1), Ok(1));
        check(Some(500), Ok(500));
        check(Some(0), Err("limit must be from 1 to 500"));
        check(Some(501), Err("limit must be from 1 to 500"));
    }

    #[test]
    fn a_query_that_does_not_parse_is_an_invalid_query() {
        #[derive(Debug, serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Q {
            limit: Option<usize>,
        }
        let parse = |uri: &str| {
            let uri: axum::http::Uri = uri.parse().unwrap();
            query_of(Query::<Q>::try_from_uri(&uri))
        };
        assert_eq!(parse("/x?limit=3").unwrap().limit, Some(3));
        for uri in ["/x?limit=many", "/x?page=2"] {
            let err = parse(uri).unwrap_err();
            assert_eq!(
                (err.status.as_u16(), err.code.as_ref()),
                (400, "invalid_query"),
                "{uri}"
            );
        }
    }
}
