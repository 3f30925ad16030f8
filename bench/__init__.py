"""pytusd's benchmark (bench/README.md): ``harness`` measures, ``scenarios`` say what, ``cli`` runs them."""
