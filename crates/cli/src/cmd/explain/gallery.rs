//! `index.html`: every overlay of one `vitrine explain` run, with what it shows.

use vitrine_train::report::svg::escape;

use super::{Entry, Method};

pub fn html(model: &str, method: Method, entries: &[Entry]) -> String {
    let what = match method {
        Method::Relevance => "relevance for the class: gradient-weighted attention, propagated through the layers (Chefer et al. 2021)",
        Method::Attention(_) => "CLS attention; the same map for every class",
    };
    let rows: String = entries
        .iter()
        .map(|e| {
            format!(
                "<figure><img src=\"{png}\" alt=\"{method} for {class} on {image}\"><figcaption><b>{class}</b> {prob:.1}% &middot; {image}</figcaption></figure>\n",
                png = escape(&e.png),
                class = escape(&e.class.label),
                image = escape(&e.image),
                prob = 100.0 * e.class.prob,
            )
        })
        .collect();
    format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>vitrine explain: {model}</title>\n\
         <style>body{{font:15px system-ui,sans-serif;margin:2em;color:#222}}figure{{margin:0 0 1.5em}}\
         img{{max-width:100%;border:1px solid #ddd}}figcaption{{margin-top:.3em}}</style></head>\n\
         <body><h1>{method} &middot; {model}</h1>\n<p>{what}. Each row: the photo, the map over the part of the photo that the \
         model sees (dimmed outside it), and the colour scale from the map's lowest value (bottom) to its highest (top).</p>\n\
         {rows}</body></html>\n",
        model = escape(model),
    )
}
