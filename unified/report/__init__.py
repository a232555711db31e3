"""Reading finished runs: tables, select, regress, the HTML report and the seed article."""
