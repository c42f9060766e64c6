//! The satisfaction plot of a simulation report, as SVG drawn by plotters.

use plotters::prelude::*;

use crate::{Error, Result};

/// Series colours (matplotlib's "tab10", so the report reads like the paper's figures).
const COLORS: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
];

/// A line per series of the fraction of sessions whose first answer met the preference, by
/// session number (values in [0, 1]); `title` on top. Returns the SVG document (800 × 420).
///
/// Errors: [`Error::Input`] when plotters cannot draw it.
pub fn satisfaction_svg(title: &str, series: &[(String, Vec<f64>)]) -> Result<String> {
    let mut svg = String::new();
    draw(&mut svg, title, series).map_err(|e| Error::Input(format!("drawing the plot: {e}")))?;
    Ok(svg)
}

fn draw<'a>(
    svg: &'a mut String,
    title: &str,
    series: &[(String, Vec<f64>)],
) -> std::result::Result<(), Box<dyn std::error::Error + 'a>> {
    let root = SVGBackend::with_string(svg, (800, 420)).into_drawing_area();
    root.fill(&WHITE)?;
    let n = series.iter().map(|s| s.1.len()).max().unwrap_or(1).max(2);
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(50)
        .build_cartesian_2d(1.0..n as f64, 0.0..1.0)?;
    chart
        .configure_mesh()
        .x_desc("session")
        .y_desc("fraction of runs")
        .x_labels(n.min(15))
        .x_label_formatter(&|x| format!("{x:.0}"))
        .draw()?;
    for (k, (name, values)) in series.iter().enumerate() {
        let color = COLORS[k % COLORS.len()];
        chart
            .draw_series(LineSeries::new(
                values
                    .iter()
                    .enumerate()
                    .map(|(i, &v)| ((i + 1) as f64, v.clamp(0.0, 1.0))),
                color.stroke_width(2),
            ))?
            .label(name.as_str())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(3))
            });
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plot_is_an_svg_with_a_line_and_a_legend_entry_per_series() {
        let svg = satisfaction_svg(
            "first answer meets the preference",
            &[
                ("combined".into(), vec![0.0, 0.5, 1.0]),
                ("rl".into(), vec![0.0, 0.0, 0.5]),
            ],
        )
        .expect("draws");
        assert!(svg.starts_with("<svg"), "{}", &svg[..svg.len().min(80)]);
        assert!(svg.contains("first answer meets the preference"));
        // The texts of the document's <text> elements.
        let texts: Vec<&str> = svg
            .split("<text")
            .skip(1)
            .filter_map(|t| t.split_once('>').and_then(|(_, r)| r.split_once("</text>")))
            .map(|(t, _)| t.trim())
            .collect();
        for label in ["combined", "rl", "session"] {
            assert!(texts.contains(&label), "{label} in {texts:?}");
        }
        // Each series is drawn in its colour.
        for c in ["#1F77B4", "#FF7F0E"] {
            assert!(svg.to_uppercase().contains(c), "{c}");
        }
    }
}
