//! The report's page: one HTML file with its style, its script and its
//! data inside (report.html is the template). Nothing is fetched: the
//! page's Content-Security-Policy forbids every load, so it works offline
//! and a stray reference would show as a console error, not a request.

use crate::model::report::ReportData;

const TEMPLATE: &str = include_str!("report.html");
const SLOT: &str = "/*SYNACK_DATA*/null";

/// The page for this data.
pub(crate) fn report_html(d: &ReportData) -> Result<String, serde_json::Error> {
    let json = serde_json::to_string(d)?;
    // Inside <script type="application/json"> only "</script" or "<!--"
    // could end the element early; a JSON string may hold "<" escaped.
    let json = json.replace('<', "\\u003c");
    Ok(TEMPLATE.replacen(SLOT, &json, 1))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::report::build;

    #[test]
    fn the_data_is_embedded_once_and_cannot_end_its_element() {
        assert_eq!(TEMPLATE.matches(SLOT).count(), 1);
        let (d, _) = build("a </script><b>", None, Vec::new(), &[]);
        let html = report_html(&d).unwrap();
        assert!(!html.contains(SLOT));
        assert!(
            html.contains(r#""title":"a \u003c/script>\u003cb>""#),
            "{html}"
        );
        assert_eq!(
            html.matches("</script>").count(),
            TEMPLATE.matches("</script>").count()
        );
        // Nothing is loaded from anywhere.
        // (The SVG namespace is a name, not a place anything is read from.)
        let t = TEMPLATE.replace("\"http://www.w3.org/2000/svg\"", "");
        for bad in [
            "http://", "https://", "src=", "@import", "url(", "fetch(", "XMLHttp",
        ] {
            assert!(!t.contains(bad), "the template holds {bad}");
        }
        assert!(TEMPLATE.contains("default-src 'none'"));
    }
}
