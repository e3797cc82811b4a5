"""`python -m relay`: the relay alone (see relay.service)."""

from relay.service import main

raise SystemExit(main())
