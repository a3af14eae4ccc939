//! Inline SVG charts (no script needed to draw them; `console.js` redraws the
//! live one with the same geometry). A withheld value is a gap in a line or a
//! marked empty bar, never a number. Every chart is followed by its table view.

use super::html::esc;

const W: f64 = 720.0;
const H: f64 = 240.0;
const PAD_L: f64 = 48.0;
const PAD_B: f64 = 36.0;
const PAD_T: f64 = 12.0;
const COLOURS: [&str; 6] = ["#1f5fa8", "#b3471d", "#2a7d3b", "#7a3fa0", "#8a6d00", "#0f6f75"];

fn y_max(values: impl Iterator<Item = f64>) -> f64 {
    let m = values.fold(0.0_f64, f64::max);
    if m <= 0.0 {
        1.0
    } else {
        let mag = 10f64.powf(m.log10().floor());
        (m / mag).ceil() * mag
    }
}

fn axes(max: f64, x_labels: &[(f64, String)], x_title: &str, y_title: &str) -> String {
    let mut s = String::new();
    let plot_h = H - PAD_B - PAD_T;
    for k in 0..=4 {
        let v = max * k as f64 / 4.0;
        let y = PAD_T + plot_h - plot_h * k as f64 / 4.0;
        s += &format!(
            "<line x1=\"{PAD_L}\" x2=\"{W}\" y1=\"{y:.1}\" y2=\"{y:.1}\" stroke=\"#d0d0d0\"/><text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\" font-size=\"11\" fill=\"#333\">{}</text>",
            PAD_L - 4.0,
            y + 4.0,
            (v * 10.0).round() / 10.0
        );
    }
    for (x, l) in x_labels {
        s += &format!(
            "<text x=\"{x:.1}\" y=\"{:.1}\" text-anchor=\"middle\" font-size=\"11\" fill=\"#333\">{}</text>",
            H - PAD_B + 14.0,
            esc(l)
        );
    }
    s += &format!(
        "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\" font-size=\"12\" fill=\"#222\">{}</text>",
        (PAD_L + W) / 2.0,
        H - 4.0,
        esc(x_title)
    );
    s += &format!(
        "<text x=\"12\" y=\"{:.1}\" font-size=\"12\" fill=\"#222\" transform=\"rotate(-90 12 {:.1})\" text-anchor=\"middle\">{}</text>",
        H / 2.0,
        H / 2.0,
        esc(y_title)
    );
    s
}

/// A line per series over `x` (equally spaced); `None` breaks the line (withheld).
pub fn lines(id: &str, title: &str, x: &[String], series: &[(String, Vec<Option<f64>>)], x_title: &str, y_title: &str) -> String {
    let max = y_max(series.iter().flat_map(|(_, v)| v.iter().flatten().copied()));
    let n = x.len().max(2);
    let plot_w = W - PAD_L - 8.0;
    let plot_h = H - PAD_B - PAD_T;
    let px = |i: usize| PAD_L + plot_w * i as f64 / (n - 1) as f64;
    let py = |v: f64| PAD_T + plot_h - plot_h * v / max;
    let step = (x.len() / 6).max(1);
    let labels: Vec<(f64, String)> = x.iter().enumerate().filter(|(i, _)| i % step == 0).map(|(i, l)| (px(i), l.clone())).collect();
    let mut body = axes(max, &labels, x_title, y_title);
    let mut legend = String::new();
    for (k, (name, values)) in series.iter().enumerate() {
        let colour = COLOURS[k % COLOURS.len()];
        let mut d = String::new();
        let mut pen = false;
        for (i, v) in values.iter().enumerate() {
            match v {
                Some(v) => {
                    d += &format!("{}{:.1},{:.1} ", if pen { "L" } else { "M" }, px(i), py(*v));
                    pen = true;
                }
                None => pen = false,
            }
        }
        body +=
            &format!("<path d=\"{}\" fill=\"none\" stroke=\"{colour}\" stroke-width=\"2\"><title>{}</title></path>", d.trim(), esc(name));
        legend += &format!(
            "<li><svg width=\"14\" height=\"4\" aria-hidden=\"true\"><rect width=\"14\" height=\"4\" fill=\"{colour}\"/></svg> {}</li>",
            esc(name)
        );
    }
    format!(
        "<figure class=\"chart\"><svg id=\"{id}\" viewBox=\"0 0 {W} {H}\" role=\"img\" aria-label=\"{t}\"><title>{t}</title>{body}</svg>\
         <figcaption>{t}<ul class=\"legend\">{legend}</ul></figcaption></figure>",
        t = esc(title)
    )
}

/// Bars at positions `x` (the x axis is the position); `None`: withheld (a marked empty bar).
pub fn bars(id: &str, title: &str, x: &[u64], values: &[Option<f64>], x_title: &str, y_title: &str) -> String {
    let max = y_max(values.iter().flatten().copied());
    let n = x.len().max(1);
    let plot_w = W - PAD_L - 8.0;
    let plot_h = H - PAD_B - PAD_T;
    let bw = plot_w / n as f64;
    let step = (n / 8).max(1);
    let labels: Vec<(f64, String)> = x
        .iter()
        .enumerate()
        .filter(|(i, _)| i % step == 0)
        .map(|(i, p)| (PAD_L + bw * (i as f64 + 0.5), format!("{}:{:02}", p / 60, p % 60)))
        .collect();
    let mut body = axes(max, &labels, x_title, y_title);
    for (i, (p, v)) in x.iter().zip(values).enumerate() {
        let x0 = PAD_L + bw * i as f64 + 1.0;
        let label = format!("{}:{:02}", p / 60, p % 60);
        match v {
            Some(v) => {
                let h = plot_h * v / max;
                body += &format!(
                    "<rect x=\"{x0:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{h:.1}\" fill=\"#1f5fa8\"><title>{label}: {v}</title></rect>",
                    PAD_T + plot_h - h,
                    (bw - 2.0).max(1.0)
                );
            }
            None => {
                body += &format!(
                    "<rect x=\"{x0:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"6\" fill=\"#bbbbbb\" class=\"withheld-bar\"><title>{label}: withheld</title></rect>",
                    PAD_T + plot_h - 6.0,
                    (bw - 2.0).max(1.0)
                );
            }
        }
    }
    format!(
        "<figure class=\"chart\"><svg id=\"{id}\" viewBox=\"0 0 {W} {H}\" role=\"img\" aria-label=\"{t}\"><title>{t}</title>{body}</svg>\
         <figcaption>{t} (grey: withheld)</figcaption></figure>",
        t = esc(title)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn withheld_points_break_lines_and_show_no_number() {
        let svg = lines("c", "t", &["a".into(), "b".into(), "c".into()], &[("all".into(), vec![Some(10.0), None, Some(20.0)])], "x", "y");
        assert_eq!(svg.matches('M').count(), 2, "two segments: {svg}");
        let b = bars("b", "t", &[0, 10], &[Some(12.0), None], "x", "y");
        assert!(b.contains("0:10: withheld"));
        assert_eq!(y_max([0.0].into_iter()), 1.0);
        assert_eq!(y_max([37.0].into_iter()), 40.0);
    }
}
