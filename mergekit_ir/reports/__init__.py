"""Results and their renderings: typed results, Markdown/LaTeX/CSV/PNG reports, published-cell comparison."""
