"""python -m pipeline.report results/basic [--tracking-uri URI] [--no-mlflow]"""
import sys

from .write import main

sys.exit(main())
