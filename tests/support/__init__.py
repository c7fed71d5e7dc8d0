"""Development tooling that is not the product: the local stack (``stack/``), fault injection (``faults``) and
sample-study generators (``samples``), used by ``make run``, ``make test`` and ``make bench``.

It lives beside the tests because it only makes sense in a source checkout: the stack points Airflow at the
checkout's ``dags/`` and ``plugins/`` and reads the checkout's ``.env``. The product (``include/dicom_relay``)
never imports anything from here; this package imports the product.
"""

from pathlib import Path

#: The root of the source checkout this package lives in (``tests/support/__init__.py`` → two levels up).
REPO = Path(__file__).resolve().parents[2]
