"""gongji (共济): settlement core for employee medical-insurance personal accounts and family mutual aid."""

__version__ = "0.1.0"
