-- Reconciliation: the monthly mart's revenue adds up to the fact's amount, month by month.
-- Read over the months written lately: those of the mart's rows and of the fact's lines written
-- in the last `test_window` (the window of the tests on the fact), each month summed again from
-- all of its lines, looked up in the fact's date_key index. Lines without an order date belong to
-- no month, and are reported when they were written in the window.
with

recent_lines as (
    select * from {{ ref('fct_transactions') }}
    where loaded_at >= now() - interval '{{ var("test_window") }}'
),

recent_months as (
    select * from {{ ref('dm_revenue_by_months') }}
    where loaded_at >= now() - interval '{{ var("test_window") }}'
),

dates as (
    select * from {{ ref('dim_dates') }}
),

months_to_check as (
    select month_start from recent_months
    union
    select dates.month_start
    from recent_lines
    inner join dates
        on recent_lines.date_key = dates.date_key
    where dates.month_start is not null
),

-- summed per day first, so the join to the calendar reads a few hundred rows, not every line
fact_by_day as (
    select
        date_key,
        sum(amount) as amount
    from {{ ref('fct_transactions') }}
    where
        date_key = any(array(
            select dates.date_key from dates
            where dates.month_start = any(array(select months_to_check.month_start from months_to_check))
        ))
    group by date_key

    union all

    select
        date_key,
        sum(amount) as amount
    from recent_lines
    where date_key = -1
    group by date_key
),

fact_by_month as (
    select
        dates.month_start,
        sum(fact_by_day.amount) as amount
    from fact_by_day
    left join dates
        on fact_by_day.date_key = dates.date_key
    group by dates.month_start
),

mart_months as (
    select * from {{ ref('dm_revenue_by_months') }}
    where month_start = any(array(select months_to_check.month_start from months_to_check))
),

compared as (
    select
        coalesce(fact_by_month.month_start, mart_months.month_start) as month_start,
        coalesce(fact_by_month.amount, 0) as fact_amount,
        coalesce(mart_months.revenue, 0) as mart_revenue
    from fact_by_month
    full outer join mart_months
        on fact_by_month.month_start = mart_months.month_start
),

final as (
    select * from compared
    where fact_amount <> mart_revenue
)

select * from final
